"""`tm-iscsi image import` and `image export`.

Import goes through oned (one.image.allocate with PATH): oned records the image and runs the
datastore's `cp`, exactly as `oneimage create --path` does, so the image is known to oned, sized,
checked and in its datastore's accounting. Without oned there is no import: an LV that oned does
not know would be an orphan.

Export reads the image's LV on its storage node (the node helper's lv-read) into a file on the
front-end: raw as is, qcow2 through qemu-img, tar.gz of the raw file."""
import os
import shutil
import subprocess
import tarfile
import threading
import time

from .. import naming
from ..errors import DriverError
from ..one.errors import OneError
from ..one.states import DatastoreType, ImageState
from .progress import Progress
from .views import one_template

FORMATS = ("raw", "qcow2", "tar.gz")
IMAGE_TYPES = ("OS", "DATABLOCK", "CDROM")
_EXTENSIONS = (".tar.gz", ".qcow2", ".raw", ".img", ".iso")


def _is_url(source):
    return source.startswith(("http://", "https://"))


def default_name(source):
    base = os.path.basename(source.rstrip("/").split("?", 1)[0]) or "image"
    for ext in _EXTENSIONS:
        if base.lower().endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base


def _written(cloud, cfg, image_id):
    """Bytes the datastore's cp has written into the new image's thin LV so far (what LVM has
    mapped of it): the import's progress, seen from the storage node. 0 when it cannot tell."""
    try:
        info = cloud.node(cfg.storage_host).call("lv-info", "--vg", cfg.vg, "--lv",
                                                 naming.image_lv(image_id))
    except DriverError:
        return 0
    if not info.get("exists"):
        return 0
    return int(int(info.get("size_bytes") or 0) * float(info.get("data_percent") or 0) / 100)


def import_image(cloud, source, ds_id, name=None, image_type="OS", persistent=False,
                 wait=True, timeout=3600, poll=2.0, sleep=time.sleep, clock=time.monotonic,
                 out=None):
    try:
        cloud.one.system_version()
    except OneError as err:
        raise DriverError(f"oned is not reachable ({err}): an image is imported through oned, "
                          "which runs the datastore's cp; start oned (or set ONE_XMLRPC) and "
                          "run the import again")
    entry = next((e for e in cloud.datastores() if e.id == int(ds_id)), None)
    if entry is None:
        raise DriverError(f"datastore {ds_id} is not an iscsi_lvm datastore (onedatastore list)")
    if entry.view.type != DatastoreType.IMAGE_DS:
        raise DriverError(f"datastore {ds_id} is a system datastore; import into the image "
                          "datastore")
    if entry.error:
        raise DriverError(entry.error)
    if _is_url(source):
        path = source
    else:
        path = os.path.abspath(source)
        if not os.path.isfile(path):
            raise DriverError(f"{source}: no such file on the front-end (oned's cp reads it "
                              "here, as oneadmin)")
        if not os.access(path, os.R_OK):
            raise DriverError(f"{path} is not readable; oned's cp reads it as oneadmin")
        # The datastore's cp would refuse it after oned made the image: refuse it first.
        from ..ds.sources import check_path
        check_path(path, entry.view)
    attributes = {"NAME": name or default_name(source), "PATH": path, "TYPE": image_type}
    if persistent:
        attributes["PERSISTENT"] = "YES"
    image_id = cloud.one.image_allocate(one_template(attributes), int(ds_id))
    result = {"id": image_id, "name": attributes["NAME"], "datastore": int(ds_id),
              "path": path, "state": "LOCKED", "source": None}
    if not wait:
        return result
    deadline = clock() + timeout
    total = os.path.getsize(path) if not _is_url(source) else 0
    progress = Progress(f"importing {attributes['NAME']} (image {image_id}) into "
                        f"{entry.config.vg}", total, out, clock=clock)
    while True:
        image = cloud.one.image_info(image_id)
        state = image.state
        if state in (ImageState.READY, ImageState.USED, ImageState.USED_PERS):
            progress.finish(total or _written(cloud, entry.config, image_id))
            result.update(state=state.name, source=image.source, size_mb=image.size_mb)
            return result
        progress.update(_written(cloud, entry.config, image_id))
        if state == ImageState.ERROR:
            raise DriverError(f"oned could not import image {image_id}: "
                              f"{image.error or 'see /var/log/one/oned.log'}; remove it with "
                              f"oneimage delete {image_id}")
        if clock() > deadline:
            raise DriverError(f"image {image_id} is still {state.name} after {timeout}s; follow "
                              f"it with oneimage show {image_id}")
        sleep(poll)


def _watch(fd, progress, stop):
    # The node helper's output goes straight into the file; its growth is the progress.
    while not stop.wait(0.25):
        progress.update(os.fstat(fd).st_size)


def _partial(dest):
    return os.path.join(os.path.dirname(dest) or ".", f".{os.path.basename(dest)}.partial")


def checked_dest(dest, force, kind=""):
    """The absolute path of a file the command is to write, refused before anything is read:
    a directory, an existing file without --force, a directory it cannot write into."""
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        raise DriverError(f"{dest} is a directory; give the file to write{kind}")
    if os.path.exists(dest) and not force:
        raise DriverError(f"{dest} exists; remove it or add --force")
    if not os.access(os.path.dirname(dest), os.W_OK):
        raise DriverError(f"cannot write into {os.path.dirname(dest)}")
    return dest


def image_lv(cloud, image_id):
    """(image, its datastore's config, vg, lv) of an iscsi_lvm image."""
    image = cloud.one.image_info(image_id)
    try:
        vg, lv = naming.parse_source(image.require_source())
    except ValueError as err:
        raise DriverError(f"image {image_id}: {err}")
    return image, cloud.datastore(image.datastore_id), vg, lv


def export_image(cloud, image_id, dest, fmt="raw", force=False, out=None, which=shutil.which):
    if fmt not in FORMATS:
        raise DriverError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "qcow2" and not which("qemu-img"):
        raise DriverError("qcow2 export needs qemu-img on the front-end: apt-get install "
                          "qemu-utils (RHEL: dnf install qemu-img), or export raw")
    dest = checked_dest(dest, force)
    directory = os.path.dirname(dest)
    image, ds, vg, lv = image_lv(cloud, image_id)
    node = cloud.node(ds.storage_host)
    info = node.call("lv-info", "--vg", vg, "--lv", lv)
    if not info.get("exists"):
        raise DriverError(f"image {image_id}: its LV {vg}/{lv} does not exist on "
                          f"{ds.storage_host}")
    size = int(info["size_bytes"])
    need = size * (2 if fmt != "raw" else 1)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise DriverError(f"{directory} has {free >> 20} MiB free; the export needs about "
                          f"{need >> 20} MiB")
    raw = _partial(dest) + (".raw" if fmt != "raw" else "")
    final_partial = _partial(dest)
    try:
        _read_lv(cloud, node, vg, lv, raw, size, out)
        if fmt == "qcow2":
            _to_qcow2(raw, final_partial, out)
        elif fmt == "tar.gz":
            _to_targz(raw, final_partial, image.name or f"img-{image_id}", size, out)
        os.replace(final_partial, dest)
    finally:
        for leftover in {raw, final_partial}:
            if os.path.exists(leftover):
                os.unlink(leftover)
    return {"image": int(image_id), "file": dest, "format": fmt, "lv": f"{vg}/{lv}",
            "image_bytes": size, "file_bytes": os.path.getsize(dest)}


def _read_lv(cloud, node, vg, lv, path, size, out):
    progress = Progress(f"reading {vg}/{lv}", size, out)
    stop = threading.Event()
    with open(path, "wb") as sink:
        watcher = threading.Thread(target=_watch, args=(sink.fileno(), progress, stop),
                                   daemon=True)
        watcher.start()
        try:
            node.stream_out("lv-read", "--vg", vg, "--lv", lv, sink=sink,
                            timeout=cloud.settings.copy_timeout)
        finally:
            stop.set()
            watcher.join()
        sink.flush()
        got = os.fstat(sink.fileno()).st_size
    progress.finish(got)
    if got != size:
        raise DriverError(f"read {got} of the {size} bytes of {vg}/{lv}; the export is "
                          "incomplete, run it again")


def _to_qcow2(raw, dest, out):
    result = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest],
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise DriverError(f"qemu-img convert failed: {lines[-1] if lines else result.returncode}")


class _Counting:
    def __init__(self, f, progress):
        self.f, self.progress, self.done = f, progress, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.done += len(data)
        self.progress.update(self.done)
        return data


def _to_targz(raw, dest, name, size, out):
    progress = Progress("compressing", size, out)
    member = tarfile.TarInfo(f"{name}.raw")
    member.size = size
    member.mtime = int(time.time())
    member.mode = 0o644
    with open(raw, "rb") as f, tarfile.open(dest, "w:gz") as tar:
        counting = _Counting(f, progress)
        tar.addfile(member, counting)
        progress.finish(counting.done)
