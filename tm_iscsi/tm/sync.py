"""Keeping a non-persistent disk when its VM is done ("sync"), as a new image.

Asked per VM in its user template: TM_ISCSI_SYNC = "YES" (every non-persistent disk) or a list
of disk ids ("0 2" or "0,2"); TM_ISCSI_SYNC_NAME names the new image (when the VM keeps more
than one disk, "-disk-<id>" is appended; a name already taken gets the first free "-<n>"); without it the name is "<vm name>-disk-<id>-<vm id>". At terminate the
disk's write-back cache is flushed, the clone is kept as it is (a thin snapshot: no copy) and
registered in oned as a new image of the same datastore."""
import re

from .. import log, naming, protocol
from ..errors import DriverError

SYNC_ATTR = "TM_ISCSI_SYNC"
NAME_ATTR = "TM_ISCSI_SYNC_NAME"
PENDING_TAG = protocol.SYNC_PENDING_TAG


def requested(vm, disk_id):
    value = (vm.user_template_attr(SYNC_ATTR) or "").strip()
    # "0" is disk 0, the OS disk users most often keep; never read it as a boolean.
    if not value or value.upper() in ("NO", "FALSE"):
        return False
    if value.upper() in ("YES", "TRUE", "ALL"):
        return True
    ids = re.split(r"[\s,]+", value)
    if not all(i.isdigit() for i in ids):
        raise DriverError(f"VM {vm.id}: {SYNC_ATTR}={value!r} must be YES or a list of disk ids")
    return str(disk_id) in ids


def kept_disks(vm):
    """Ids of the disks this VM keeps: its non-persistent image disks (clones) that are asked."""
    return [d.disk_id for d in vm.disks if d.clone and requested(vm, d.disk_id)]


def image_name(vm, disk_id):
    """The name asked for; "-disk-<id>" is appended only when the VM keeps several disks."""
    chosen = (vm.user_template_attr(NAME_ATTR) or "").strip()
    if chosen:
        return f"{chosen}-disk-{disk_id}" if len(kept_disks(vm)) > 1 else chosen
    return f"{vm.name or 'vm'}-disk-{disk_id}-{vm.id}"


# A name taken by another image gets the first free "-<n>" suffix; past this many, a line.
FREE_NAME_TRIES = 100


def _allocate_with_free_name(ctx, name, template_of, ds_id):
    """oned refuses a NAME the owner already uses ("NAME is already taken by IMAGE n"): that
    must not fail the terminate (EPILOG_FAILURE), so the next free name is used instead."""
    from ..one.errors import OnedError
    for attempt in range(FREE_NAME_TRIES):
        candidate = name if attempt == 0 else f"{name}-{attempt}"
        try:
            return candidate, ctx.one.image_allocate(template_of(candidate), ds_id)
        except OnedError as err:
            if "is already taken" not in str(err):
                raise
            log.info(f"image name {candidate!r} is taken; trying the next one")
    raise DriverError(f"no free image name for {name!r} (tried {name} to "
                      f"{name}-{FREE_NAME_TRIES - 1}); set {NAME_ATTR} to another name")


def keep_as_image(ctx, vm, disk_id, volume, released):
    """`released`: the storage node's answer for the disk's storage-release (keep), which
    already marked it pending and holds its size and tags."""
    node = ctx.node(volume.ds.storage_host)
    info = released or {}
    if "exists" not in info:
        raise DriverError(f"cannot keep disk {disk_id} of VM {vm.id}: the storage node "
                          f"{volume.ds.storage_host} did not answer for {volume.vg}/{volume.lv} "
                          "(is tm_iscsi on it as new as on the front-end?)")
    if not info.get("exists"):
        raise DriverError(f"cannot keep disk {disk_id} of VM {vm.id}: {volume.vg}/{volume.lv} "
                          "does not exist")
    tags = info.get("tags") or []
    if any(t.startswith(protocol.SYNC_IMAGE_TAG) for t in tags):
        log.info(f"{volume.vg}/{volume.lv} is already registered as an image")
        return
    disk = vm.disk(disk_id)
    name = image_name(vm, disk_id)
    size_mib = max(1, int(info["size_bytes"]) >> 20)

    def template_of(chosen):
        return "\n".join([
            f'NAME = "{_quote(chosen)}"',
            f'SOURCE = "{naming.source(volume.vg, volume.lv)}"',
            f'SIZE = "{size_mib}"',
            'FORMAT = "raw"',
            f'TYPE = "{"OS" if (disk.type or "").upper() in ("", "OS", "FILE", "BLOCK") else "DATABLOCK"}"',
            f'DESCRIPTION = "disk {disk_id} of VM {vm.id}, kept at terminate by tm_iscsi"',
        ])
    name, image_id = _allocate_with_free_name(ctx, name, template_of, volume.ds.ds_id)
    node.call("lv-tag", "--vg", volume.vg, "--lv", volume.lv,
              "--add", f"{protocol.SYNC_IMAGE_TAG}{image_id}",
              "--add", protocol.owner_tag("kind", "image"), "--delete", PENDING_TAG,
              "--delete", protocol.owner_tag("kind", "clone"),
              "--delete", protocol.owner_tag("vm", vm.id))
    log.info(f"disk {disk_id} of VM {vm.id} kept as image {image_id} ({name})")


def _quote(text):
    return str(text).replace("\\", "\\\\").replace('"', '\\"')
