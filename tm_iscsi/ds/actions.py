"""The DS actions. Each returns the line to print on stdout (protocol), or None."""
import hashlib
import os
import tempfile

from .. import dsconf, log, naming, protocol, volumes
from ..errors import DriverError
from ..tm import storage
from . import sources

EXPORT_DIR = os.environ.get("TM_ISCSI_EXPORT_DIR", "/var/tmp/tm_iscsi-export")


def _config(ctx, action):
    return dsconf.from_datastore(action.datastore, ctx.settings)


def _image_lv(action):
    return naming.image_lv(action.object_id)


def _source_lv(ds, image):
    return volumes.source_lv(image.require_source(), ds.vg,
                             f"image in datastore {ds.ds_id}")


def stat(ctx, action):
    path = sources.check_path(action.require_image().require_path(), action.datastore)
    _fmt, size = sources.probe(path)
    return str(sources.size_mib(size))


def cp(ctx, action):
    ds = _config(ctx, action)
    image = action.require_image()
    path = sources.check_path(image.require_path(), action.datastore)

    def size_mib(fmt, virtual_size):
        if virtual_size is None and not image.size_mb:
            raise DriverError(f"{path[:120]} does not say its size and the image has no SIZE; "
                              "cannot size the LV")
        return max(sources.size_mib(virtual_size or 0), image.size_mb or 0)

    # One download: the format is read from the head of the stream that is then written (a
    # backup's downloader rebuilds the chain on the backup server for every open).
    lv = _image_lv(action)
    storage.create_from(ctx, ds, lv, path, size_mib, kind="image", image=action.object_id)
    return f"{naming.source(ds.vg, lv)} raw"


def mkfs(ctx, action):
    ds = _config(ctx, action)
    image = action.require_image()
    lv = _image_lv(action)
    if image.is_save_as:
        # disk-saveas: cpds makes the LV as a thin snapshot of the disk; only the name is due now.
        return naming.source(ds.vg, lv)
    try:
        fs = protocol.checked_fs(image.fs, f"image {action.object_id}")
    except ValueError as err:
        raise DriverError(str(err))
    size_mib = image.require_size_mb()
    if size_mib < 1:
        raise DriverError(f"image {action.object_id}: SIZE={size_mib} MB is not a size to make")
    storage.create(ctx, ds, lv, size_mib, kind="image", image=action.object_id)
    if fs != "raw":
        try:
            storage.mkfs(ctx, ds, lv, fs)
        except DriverError:
            # oned calls no rm after a failed mkfs: a blank LV left here would be nobody's.
            storage.remove_quietly(ctx, ds, lv)
            raise
    return naming.source(ds.vg, lv)


def clone(ctx, action):
    """oneimage clone: a thin snapshot of the origin image, O(1)."""
    ds = _config(ctx, action)
    image = action.require_image()
    # PATH is the origin's SOURCE; a thin snapshot stays in its pool, so the VG must be ours.
    origin = volumes.source_lv(image.require_path(), ds.vg,
                               f"clone of {image.path!r} into datastore {ds.ds_id}")
    lv = _image_lv(action)
    storage.snapshot(ctx, ds, origin, lv, size_mib=image.size_mb, kind="image",
                     image=action.object_id)
    return f"{naming.source(ds.vg, lv)} raw"


def rm(ctx, action):
    ds = _config(ctx, action)
    image = action.require_image()
    if not image.source:
        return None
    storage.remove(ctx, ds, _source_lv(ds, image))
    return None


def monitor(ctx, action):
    from ..tm.monitor import monitor_lines
    return "\n".join(monitor_lines(ctx, _config(ctx, action)))


def snap_delete(ctx, action):
    ds = _config(ctx, action)
    image = action.require_image()
    lv = _source_lv(ds, image)
    storage.remove(ctx, ds, naming.snapshot_lv(lv, image.require_target_snapshot()),
                   with_snapshots=False)


def snap_revert(ctx, action):
    ds = _config(ctx, action)
    image = action.require_image()
    lv = _source_lv(ds, image)
    snap = naming.snapshot_lv(lv, image.require_target_snapshot())
    # The new content is made before the old goes: a refusal (pool too full) keeps the image.
    storage.revert(ctx, ds, lv, snap, kind="image", image=action.object_id)


def snap_flatten(ctx, action):
    """The image becomes its chosen snapshot, and no snapshot is left. The chosen one goes
    last: a run that stopped after removing it had reverted the image and removed every other
    snapshot already, so finding none at all means the flatten is done."""
    ds = _config(ctx, action)
    image = action.require_image()
    lv = _source_lv(ds, image)
    target = naming.snapshot_lv(lv, image.require_target_snapshot())
    snapshots = storage.snapshots_of(ctx, ds, lv)
    if target not in snapshots:
        if snapshots:
            raise DriverError(f"snapshot {target} of image {action.object_id} does not exist")
        log.info(f"{ds.vg}/{lv} has no snapshot left: flattened by an earlier run")
        return
    storage.revert(ctx, ds, lv, target, kind="image", image=action.object_id)
    for name in sorted(snapshots, key=lambda name: name == target):
        storage.remove(ctx, ds, name, with_snapshots=False)


def export(ctx, action):
    """Marketplace export: the image's bytes as a raw file on the front-end, for the market
    driver to upload and then dispose of."""
    ds = _config(ctx, action)
    image = action.require_image()
    lv = _source_lv(ds, image)
    try:
        os.makedirs(EXPORT_DIR, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"img-{action.object_id}-", suffix=".raw",
                                    dir=EXPORT_DIR)
    except OSError as err:
        raise DriverError(f"cannot write into the export spool {EXPORT_DIR}: {err.strerror}")
    md5 = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            ctx.node(ds.storage_host).stream_out("lv-read", "--vg", ds.vg, "--lv", lv,
                                                 sink=out, timeout=ctx.settings.copy_timeout)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                md5.update(block)
        size_mb = sources.size_mib(os.path.getsize(path))
    except BaseException as err:
        # The market driver disposes of the file only after a successful export.
        os.unlink(path)
        if isinstance(err, OSError):
            raise DriverError(f"exporting {ds.vg}/{lv} into {EXPORT_DIR} failed: {err.strerror}")
        raise
    return ("<IMPORT_INFO><IMPORT_SOURCE><![CDATA[{}]]></IMPORT_SOURCE><MD5><![CDATA[{}]]></MD5>"
            "<SIZE><![CDATA[{}]]></SIZE><FORMAT><![CDATA[raw]]></FORMAT>"
            "<DISPOSE>YES</DISPOSE><DISPOSE_CMD><![CDATA[rm -f {}]]></DISPOSE_CMD></IMPORT_INFO>"
            ).format(path, md5.hexdigest(), size_mb, path)
