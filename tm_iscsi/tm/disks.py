"""clone, ln, mkimage, mkswap, delete, mvds, cpds, resize: one VM disk on one host."""
from .. import attachment, cachemode, caching, log, naming, volumes
from ..errors import DriverError
from . import storage, sync


def _attach(ctx, vm, disk_id, volume, host, path):
    mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    return attachment.attach(ctx, host, volume, path, mode, image_lv)


def clone(ctx, args):
    """Non-persistent disk: a thin snapshot of the image (O(1)), then attached to the host."""
    vm = ctx.vm(args.vmid)
    disk_id = args.disk.disk_id
    disk = vm.disk(disk_id)
    volume = volumes.of_disk(ctx, vm, disk_id, args.dsid)
    _image_vg, image_lv = naming.parse_source(disk.require_source())
    storage.snapshot(ctx, volume.ds, image_lv, volume.lv, size_mib=disk.size_mb,
                     kind="clone", vm=vm.id, disk=disk_id, image=disk.image_id)
    mode, _ = volumes.cache_plan(vm, disk_id, volume)
    if cachemode.has_read(mode):
        caching.prepare_read_layer(ctx, volume, image_lv, disk.size_mb, vm.id, disk_id)
    _attach(ctx, vm, disk_id, volume, args.disk.host, args.disk.path)


def ln(ctx, args):
    """Persistent, CD-ROM and read-only images: the image LV itself, never copied or deleted."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    info = storage.lv_info(ctx, volume.ds, volume.lv)
    if not info.get("exists"):
        raise DriverError(f"image LV {volume.vg}/{volume.lv} does not exist on "
                          f"{volume.ds.storage_host}")
    if not volume.readonly:
        # A VM is about to write the image: its base must not serve new clones any more.
        caching.retire_base(ctx, volume.ds, volume.lv)
    _attach(ctx, vm, args.disk.disk_id, volume, args.disk.host, args.disk.path)


def _volatile(ctx, args, fs):
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    created = storage.create(ctx, volume.ds, volume.lv, args.size_mb, kind="volatile",
                             vm=vm.id, disk=args.disk.disk_id)
    if created.get("created") or fs != "raw":
        # lv-mkfs is idempotent on the node (it keeps a filesystem of the right type).
        storage.mkfs(ctx, volume.ds, volume.lv, fs)
    _attach(ctx, vm, args.disk.disk_id, volume, args.disk.host, args.disk.path)


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
    mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    keep = volume.kind == "clone" and sync.requested(vm, disk_id)
    if not ctx.is_frontend(args.target.host):
        # Dirty blocks of a disk that is deleted next are dropped, unless the user asked for
        # the disk to be kept: then they are flushed first.
        attachment.detach(ctx, args.target.host, volume, args.target.path,
                          unexport=not volume.owned_by_vm or keep,
                          flush=keep or not volume.owned_by_vm, image_lv=image_lv)
    if keep:
        sync.keep_as_image(ctx, vm, disk_id, volume)
        # The region map described the VM's disk against its image's base; the new image has
        # no base yet (its first cached clone makes one) and nothing else owns the map.
        caching.forget_map(ctx, volume)
        return
    if volume.owned_by_vm:
        caching.forget_map(ctx, volume)
        storage.remove(ctx, volume.ds, volume.lv)
        log.info(f"removed {volume.vg}/{volume.lv}")


def mvds(ctx, args):
    """A persistent disk goes back to its image: every write is on the image LV once the host's
    write-back cache is flushed, so the host only lets go of it."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    if not ctx.is_frontend(args.disk.host):
        attachment.detach(ctx, args.disk.host, volume, args.disk.path, flush=True)
    else:
        attachment.unexport_from(ctx, volume)


def cpds(ctx, args):
    """Save-as: the new image (SOURCE, named by DS mkfs) becomes a thin snapshot of the disk or of
    one of its snapshots."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    vg, new_lv = naming.parse_source(args.source)
    if vg != volume.vg:
        raise DriverError(f"cannot save disk {args.disk.disk_id} of VM {vm.id} from VG "
                          f"{volume.vg} into VG {vg}: a thin snapshot stays in its pool")
    if args.snap_id < 0:
        attachment.flush_if_cached(ctx, vm, args.disk.disk_id, volume, args.disk.host)
        origin = volume.lv
    else:
        origin = naming.snapshot_lv(volume.lv, args.snap_id)
    image_id = new_lv.split("-", 1)[1] if new_lv.startswith("img-") else None
    storage.snapshot(ctx, volume.ds, origin, new_lv, kind="image", image=image_id)


def resize(ctx, args):
    vm = ctx.vm(args.vmid)
    disk_id = args.disk.disk_id
    volume = volumes.of_disk(ctx, vm, disk_id, args.dsid)
    mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    on_host = not ctx.is_frontend(args.disk.host)
    if volume.kind == "clone":
        # The region map and the base cover the old size only.
        caching.forget_map(ctx, volume)
    if on_host and mode != "none":
        # The dm layers are sized when built: flush and rebuild them over the grown LUN.
        attachment.detach(ctx, args.disk.host, volume, args.disk.path, unexport=False,
                          flush=True, image_lv=image_lv)
    storage.resize(ctx, volume.ds, volume.lv, args.size_mb)
    if on_host:
        # Re-attaching reuses the session and rescans it, so the host sees the new size.
        attachment.attach(ctx, args.disk.host, volume, args.disk.path, mode, image_lv)
