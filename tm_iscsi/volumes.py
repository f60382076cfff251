"""Which LV backs a VM disk, and whether tm_iscsi created it for this VM (and so may delete it)."""
from dataclasses import dataclass

from . import naming
from .errors import DriverError


@dataclass(frozen=True)
class Volume:
    ds: "object"       # DatastoreConfig of the datastore whose VG holds the LV
    lv: str
    kind: str           # "clone" | "volatile" | "image" (persistent, CD-ROM, read-only: linked)
    readonly: bool = False

    @property
    def vg(self):
        return self.ds.vg

    @property
    def owned_by_vm(self):
        """Clones and volatile disks die with the VM; linked images never do."""
        return self.kind in ("clone", "volatile")

    @property
    def iqn(self):
        return naming.target_iqn(self.ds.vg, self.lv, self.ds.iqn_base)

    @property
    def serial(self):
        return naming.lun_serial(self.ds.vg, self.lv)


def source_lv(value, vg, what):
    """The LV of an image SOURCE (`<vg>/<lv>` as DS cp / mkfs / clone wrote it) in VG `vg`; any
    other form, another VG or an LV tm_iscsi does not give images is refused (DriverError)."""
    try:
        source_vg, lv = naming.parse_source(value)
    except ValueError as err:
        raise DriverError(f"{what}: {err}")
    if source_vg != vg:
        raise DriverError(f"{what}: SOURCE {value} is not in VG {vg}")
    if not naming.is_source_lv(lv):
        raise DriverError(f"{what}: SOURCE {value} names {lv}, not an image LV of tm_iscsi "
                          "(img-N, or vm-N-disk-N kept as an image)")
    return lv


def of_disk(ctx, vm, disk_id, dsid_hint=None):
    """The Volume of disk `disk_id` of `vm` (a VirtualMachine view)."""
    disk = vm.disk(disk_id)
    if disk.is_volatile:
        sys_ds = ctx.datastore(vm.current_history.ds_id)
        return Volume(sys_ds, naming.disk_lv(vm.id, disk_id), "volatile")
    if dsid_hint is not None and disk.datastore_id is not None and \
            int(dsid_hint) != disk.datastore_id:
        raise DriverError(f"VM {vm.id} disk {disk_id} is in datastore {disk.datastore_id}, "
                          f"not {dsid_hint} as the action says")
    ds = ctx.datastore(disk.datastore_id if disk.datastore_id is not None else dsid_hint)
    image_lv = source_lv(disk.require_source(), ds.vg,
                         f"VM {vm.id} disk {disk_id} (datastore {ds.ds_id})")
    if disk.clone:
        return Volume(ds, naming.disk_lv(vm.id, disk_id), "clone")
    return Volume(ds, image_lv, "image", readonly=bool(disk.readonly or disk.is_cdrom))


def cache_plan(vm, disk_id, volume):
    """(cache mode for this disk, the image LV its read layer caches, or None without one)."""
    from . import cachemode
    disk = vm.disk(disk_id)
    mode = "none" if volume.readonly else cachemode.effective(
        cachemode.requested(disk, volume.ds), volume.kind)
    image_lv = None
    if volume.kind == "clone" and cachemode.has_read(mode):
        image_lv = naming.parse_source(disk.require_source())[1]
    return mode, image_lv
