"""clone, ln, mkimage, mkswap, delete, mvds, cpds, resize: one VM disk on one host."""
from .. import attachment, log, naming, volumes
from ..errors import DriverError
from . import storage


def clone(ctx, args):
    """Non-persistent disk: a thin snapshot of the image (O(1)), then attached to the host."""
    vm = ctx.vm(args.vmid)
    disk = vm.disk(args.disk.disk_id)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    image_vg, image_lv = naming.parse_source(disk.require_source())
    storage.snapshot(ctx, volume.ds, image_lv, volume.lv, size_mib=disk.size_mb,
                     kind="clone", vm=vm.id, disk=args.disk.disk_id, image=disk.image_id)
    attachment.attach(ctx, args.disk.host, volume, args.disk.path)


def ln(ctx, args):
    """Persistent, CD-ROM and read-only images: the image LV itself, never copied or deleted."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    info = storage.lv_info(ctx, volume.ds, volume.lv)
    if not info.get("exists"):
        raise DriverError(f"image LV {volume.vg}/{volume.lv} does not exist on "
                          f"{volume.ds.storage_host}")
    attachment.attach(ctx, args.disk.host, volume, args.disk.path)


def _volatile(ctx, args, fs):
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    created = storage.create(ctx, volume.ds, volume.lv, args.size_mb, kind="volatile",
                             vm=vm.id, disk=args.disk.disk_id)
    if created.get("created") or fs != "raw":
        # lv-mkfs is idempotent on the node (it keeps a filesystem of the right type).
        storage.mkfs(ctx, volume.ds, volume.lv, fs)
    attachment.attach(ctx, args.disk.host, volume, args.disk.path)


def mkimage(ctx, args):
    vm = ctx.vm(args.vmid)
    fs = vm.disk(args.disk.disk_id).fs or "raw"
    _volatile(ctx, args, fs)


def mkswap(ctx, args):
    _volatile(ctx, args, "swap")


def delete_disk(ctx, args):
    vm = ctx.vm(args.vmid)
    disk_id = args.target.disk_id
    if vm.find_disk(disk_id) is None:
        # The context disk (and any file we put in the VM dir) is not a volume.
        if not ctx.is_frontend(args.target.host):
            ctx.node(args.target.host).call("path-remove", "--path", args.target.path)
        return
    volume = volumes.of_disk(ctx, vm, disk_id, args.dsid)
    if not ctx.is_frontend(args.target.host):
        attachment.detach(ctx, args.target.host, volume, args.target.path,
                          unexport=not volume.owned_by_vm)
    if volume.owned_by_vm:
        storage.remove(ctx, volume.ds, volume.lv)
        log.info(f"removed {volume.vg}/{volume.lv}")


def mvds(ctx, args):
    """A persistent disk goes back to its image: the image LV already holds every write, so the
    host only lets go of it."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    if not ctx.is_frontend(args.disk.host):
        attachment.detach(ctx, args.disk.host, volume, args.disk.path)
    else:
        attachment.unexport_from(ctx, volume)


def cpds(ctx, args):
    """Save-as: the new image (SOURCE, named by DS mkfs) becomes a thin snapshot of the disk or of
    one of its snapshots."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    vg, new_lv = naming.parse_source(args.source)
    origin = volume.lv if args.snap_id < 0 else naming.snapshot_lv(volume.lv, args.snap_id)
    if vg != volume.vg:
        raise DriverError(f"cannot save disk {args.disk.disk_id} of VM {vm.id} from VG "
                          f"{volume.vg} into VG {vg}: a thin snapshot stays in its pool")
    image_id = new_lv.split("-", 1)[1] if new_lv.startswith("img-") else None
    storage.snapshot(ctx, volume.ds, origin, new_lv, kind="image", image=image_id)


def resize(ctx, args):
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    storage.resize(ctx, volume.ds, volume.lv, args.size_mb)
    if not ctx.is_frontend(args.disk.host):
        # Re-attaching reuses the session and rescans it, so the host sees the new size.
        attachment.attach(ctx, args.disk.host, volume, args.disk.path)
