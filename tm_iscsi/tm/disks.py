"""clone, ln, mkimage, mkswap, delete, mvds, cpds, resize: one VM disk on one host, each in
the two node transactions of tm_iscsi.attachment (and a front-end disk in one)."""
from .. import attachment, log, naming, protocol, volumes
from ..attachment import Release
from ..errors import DriverError
from . import storage, sync


def _owner(volume, vm, disk_id, **extra):
    return {"kind": volume.kind, "vm": vm.id, "disk": disk_id, **extra}


def clone(ctx, args):
    """Non-persistent disk: a thin snapshot of the image (O(1)), made, cached and exported by
    the storage node in one call, attached by the host in one."""
    vm = ctx.vm(args.vmid)
    disk_id = args.disk.disk_id
    disk = vm.disk(disk_id)
    volume = volumes.of_disk(ctx, vm, disk_id, args.dsid)
    _image_vg, image_lv = naming.parse_source(disk.require_source())
    create = {"origin": image_lv, "size_mib": disk.size_mb,
              "owner": _owner(volume, vm, disk_id, image=disk.image_id)}
    attachment.attach(ctx, args.disk.host, [attachment.planned(
        ctx, vm, disk_id, volume, args.disk.path, create=create)])


def ln(ctx, args):
    """Persistent, CD-ROM and read-only images: the image LV itself, never copied or deleted.
    A VM about to write the image retires its base (it serves no new clone)."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    attachment.attach(ctx, args.disk.host, [attachment.planned(
        ctx, vm, args.disk.disk_id, volume, args.disk.path, retire_base=not volume.readonly)])


def _volatile(ctx, args, fs):
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    create = {"size_mib": args.size_mb, "fs": fs,
              "owner": _owner(volume, vm, args.disk.disk_id)}
    attachment.attach(ctx, args.disk.host, [attachment.planned(
        ctx, vm, args.disk.disk_id, volume, args.disk.path, create=create)])


def mkimage(ctx, args):
    vm = ctx.vm(args.vmid)
    try:
        fs = protocol.checked_fs(vm.disk(args.disk.disk_id).fs, f"VM {vm.id} disk "
                                 f"{args.disk.disk_id}")
    except ValueError as err:
        raise DriverError(str(err))
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
    _mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    keep = volume.kind == "clone" and sync.requested(vm, disk_id)
    owned = volume.owned_by_vm and not keep
    # Dirty blocks of a disk that is deleted next are dropped, unless the user asked for the
    # disk to be kept: then they are flushed first. The region map described the VM's disk
    # against its image's base: a kept disk (a new image, no base yet) has no use for it.
    _, released = attachment.detach_and_report(ctx, args.target.host, [Release(
        volume, args.target.path, flush=not owned, image_lv=image_lv, remove=owned,
        map="forget" if keep else "keep", keep=keep)])
    if keep:
        sync.keep_as_image(ctx, vm, disk_id, volume, released.get(volume.lv))
    elif owned:
        log.info(f"removed {volume.vg}/{volume.lv}")


def mvds(ctx, args):
    """A persistent disk goes back to its image: every write is on the image LV once the host's
    write-back cache is flushed, so the host only lets go of it."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    attachment.detach(ctx, args.disk.host, [Release(volume, args.disk.path, flush=True)])


def cpds(ctx, args):
    """Save-as: the new image (SOURCE, named by DS mkfs) becomes a thin snapshot of the disk or of
    one of its snapshots."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    vg, _ = naming.parse_source(args.source)
    if vg != volume.vg:
        raise DriverError(f"cannot save disk {args.disk.disk_id} of VM {vm.id} from VG "
                          f"{volume.vg} into VG {vg}: a thin snapshot stays in its pool")
    new_lv = volumes.source_lv(args.source, vg, f"the new image of VM {vm.id} disk "
                               f"{args.disk.disk_id}")
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
    # The region map and the base cover the old size only.
    forget = "forget" if volume.kind == "clone" else "keep"
    if on_host and mode != "none":
        # The dm layers are sized when built: flush and rebuild them over the grown LUN.
        attachment.detach(ctx, args.disk.host, [Release(
            volume, args.disk.path, flush=True, image_lv=image_lv, unexport=False,
            keep_wb_guard=True, map=forget)])
    elif forget == "forget":
        attachment.release_storage(ctx, args.disk.host, [Release(
            volume, unexport=False, keep_wb_guard=True, map=forget)])
    storage.resize(ctx, volume.ds, volume.lv, args.size_mb)
    if on_host:
        # Re-attaching reuses the session and rescans it, so the host sees the new size.
        attachment.attach(ctx, args.disk.host, [attachment.Attach(
            volume, args.disk.path, mode, image_lv)])
