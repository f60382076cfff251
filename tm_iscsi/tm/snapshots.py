"""Disk snapshots: thin snapshots of the disk's LV, named `<lv>-snap-<id>`."""
from .. import attachment, naming, volumes
from ..attachment import Release
from . import storage


def _flush_and_snapshot(ctx, args):
    """The thin snapshot of the storage node's LV, the host's dirty blocks written there first.
    Returns (vm, volume)."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    attachment.flush_if_cached(ctx, vm, args.disk.disk_id, volume, args.disk.host)
    storage.snapshot(ctx, volume.ds, volume.lv, naming.snapshot_lv(volume.lv, args.snap_id),
                     kind="snapshot", vm=vm.id if volume.owned_by_vm else None,
                     snap=args.snap_id)
    return vm, volume


def snap_create(ctx, args):
    _flush_and_snapshot(ctx, args)


def snap_create_live(ctx, args):
    """The VM runs. A thin snapshot of the storage node's LV holds every write the guest saw
    complete before it (crash-consistent). A write-back layer is flushed first and stays clean
    (writes go through to the LV) until the snapshot exists; then it caches again."""
    vm, volume = _flush_and_snapshot(ctx, args)
    attachment.resume_writeback(ctx, vm, args.disk.disk_id, volume, args.disk.host)


def snap_delete(ctx, args):
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    storage.remove(ctx, volume.ds, naming.snapshot_lv(volume.lv, args.snap_id),
                   with_snapshots=False)


def snap_revert(ctx, args):
    """The disk LV is replaced by a new thin snapshot of the chosen snapshot, under the same name
    (so the same IQN and serial). oned allows this only while the VM is powered off."""
    vm = ctx.vm(args.vmid)
    volume = volumes.of_disk(ctx, vm, args.disk.disk_id, args.dsid)
    snap_lv = naming.snapshot_lv(volume.lv, args.snap_id)
    info = storage.lv_info(ctx, volume.ds, snap_lv)
    if not info.get("exists"):
        from ..errors import DriverError
        raise DriverError(f"snapshot {args.snap_id} of disk {args.disk.disk_id} "
                          f"({volume.vg}/{snap_lv}) does not exist")
    replace_content(ctx, vm, args.disk.disk_id, volume, args.disk.host, args.disk.path, snap_lv)


def replace_content(ctx, vm, disk_id, volume, host, link, source_lv, remove_source=False):
    """The disk's LV takes the content of `source_lv` under its own name (so the same IQN and
    serial), its host's stack rebuilt over the new content: a snapshot revert, a restore (whose
    scratch `source_lv` goes before the stack is rebuilt)."""
    on_host = not ctx.is_frontend(host)
    mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    # The disk's content is replaced: what its write-back cache holds is dropped, and the region
    # map described the old content.
    forget = "forget" if volume.kind == "clone" else "keep"
    if on_host:
        attachment.detach(ctx, host, [Release(volume, link, flush=False, image_lv=image_lv,
                                              unexport=False, map=forget)])
    elif forget == "forget":
        attachment.release_storage(ctx, host, [Release(volume, unexport=False, map=forget)])
    owner = {"kind": volume.kind, "vm": vm.id if volume.owned_by_vm else None,
             "disk": disk_id if volume.owned_by_vm else None,
             "image": vm.disk(disk_id).image_id}
    # The new content is made before the old goes: a refusal (pool too full) keeps the disk.
    storage.revert(ctx, volume.ds, volume.lv, source_lv, **owner)
    if remove_source:
        storage.remove(ctx, volume.ds, source_lv, with_snapshots=False)
    if on_host:
        attachment.attach(ctx, host, [attachment.Attach(volume, link, mode, image_lv)])
