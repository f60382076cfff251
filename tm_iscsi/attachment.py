"""Giving a host a VM disk and taking it back: the three-party dance between the host (its
initiator name), the storage node (target + ACL for exactly that initiator) and the host again
(session, device checked by serial, `disk.N` symlink), with the host's cache stack in between
when the disk has cache layers (tm_iscsi.caching)."""
from . import caching, log
from .remote import NodeUnreachable


def initiator_of(ctx, host):
    return ctx.initiator(host)


def export_to(ctx, volume, initiator):
    ds = volume.ds
    args = ["--vg", ds.vg, "--lv", volume.lv, "--initiator", initiator,
            "--iqn-base", ds.iqn_base, *ds.chap_args()]
    if volume.readonly:
        args.append("--readonly")
    return ctx.node(ds.storage_host).call("export", *args, stdin=ds.chap_stdin())


def attach_lun(ctx, host, volume, link_path=None):
    """Export `volume` to `host` only and log the host in; link it at `link_path` if given."""
    exported = export_to(ctx, volume, initiator_of(ctx, host))
    log.info(f"{volume.vg}/{volume.lv} exported to {host} as {exported['iqn']}")
    args = ["--portal", volume.ds.portal, "--iqn", exported["iqn"], "--serial",
            exported["serial"], *volume.ds.chap_args(), "--timeout", ctx.settings.attach_timeout]
    if link_path:
        args += ["--link", link_path]
    return ctx.node(host).call("attach", *args, stdin=volume.ds.chap_stdin(),
                               timeout=ctx.settings.attach_timeout + ctx.settings.ssh_timeout)


def attach(ctx, host, volume, link_path, mode="none", image_lv=None):
    """Give `host` the disk at `link_path`, with the cache layers of `mode`. Returns the mode
    really assembled (a read layer is dropped when the disk's region map cannot be trusted)."""
    if mode == "none":
        if volume.owned_by_vm or volume.kind == "image":
            caching.check_wb_guard(ctx, volume, host)
        result = attach_lun(ctx, host, volume, link_path)
        log.info(f"{host}:{link_path} -> {result.get('device')}")
        return mode
    return caching.assemble(ctx, host, volume, link_path, mode, image_lv)


def detach_lun(ctx, host, volume, link_path=None, unexport=True):
    """Log `host` out of `volume`'s target, then revoke the host's ACL (and drop the target when
    no ACL is left). A host that cannot be reached (crashed) loses every ACL of the target
    instead: nothing may keep writing through a session we can no longer see."""
    args = ["--portal", volume.ds.portal, "--iqn", volume.iqn]
    if link_path:
        args += ["--link", link_path]
    initiator = None
    try:
        ctx.node(host).call("detach", *args)
        initiator = initiator_of(ctx, host)
    except NodeUnreachable as err:
        log.info(f"{err}; revoking every ACL of {volume.iqn}")
    if unexport:
        unexport_from(ctx, volume, initiator)


def detach(ctx, host, volume, link_path=None, unexport=True, flush=True, image_lv=None,
           keep_wb_guard=False):
    """Take the disk back from `host`: its cache stack first (write-back data flushed to the
    storage node, or dropped when `flush` is False), then the LUNs."""
    try:
        torn = caching.teardown(ctx, host, volume, flush, image_lv, keep_wb_guard)
    except NodeUnreachable as err:
        log.info(f"{err}; its cache stack of {volume.lv} stays until it boots")
        torn = None
    detach_lun(ctx, host, volume, link_path, unexport)
    # The map LUN goes with the clone; on a re-run the stack may be gone already, so it is not
    # the stack's existence that says whether the map is still attached.
    if volume.kind == "clone" and ((torn and torn.get("existed")) or image_lv or
                                   caching.map_exists(ctx, volume)):
        detach_lun(ctx, host, caching.map_volume(volume))


def unexport_from(ctx, volume, initiator=None):
    ds = volume.ds
    args = ["--vg", ds.vg, "--lv", volume.lv, "--iqn-base", ds.iqn_base]
    if initiator:
        args += ["--initiator", initiator]
    return ctx.node(ds.storage_host).call("unexport", *args)


def _has_writeback_on_host(ctx, vm, disk_id, volume, host):
    from . import cachemode, volumes
    mode, _ = volumes.cache_plan(vm, disk_id, volume)
    return cachemode.has_writeback(mode) and not ctx.is_frontend(host)


def flush_if_cached(ctx, vm, disk_id, volume, host):
    """flush() when the disk has a write-back layer on a host: before a snapshot or a save-as of
    the storage node's LV."""
    if _has_writeback_on_host(ctx, vm, disk_id, volume, host):
        flush(ctx, host, volume)


def resume_writeback(ctx, vm, disk_id, volume, host):
    """After flush_if_cached and a live snapshot: the running disk's stack caches writes again."""
    if _has_writeback_on_host(ctx, vm, disk_id, volume, host):
        ctx.node(host).call("stack-writeback", "--name", volume.lv)


def flush(ctx, host, volume):
    """Write the host's dirty blocks of `volume` back to the storage node, keeping the stack (and
    keeping it clean from now on): before a snapshot, a save-as, a live migration."""
    if ctx.is_frontend(host):
        return None
    return ctx.node(host).call("stack-flush", "--name", volume.lv,
                               timeout=ctx.settings.copy_timeout)
