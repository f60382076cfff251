"""Giving a host a VM disk and taking it back: the three-party dance between the host (its
initiator name), the storage node (target + ACL for exactly that initiator) and the host again
(session, device checked by serial, `disk.N` symlink)."""
from . import log
from .remote import NodeUnreachable


def initiator_of(ctx, host):
    return ctx.node(host).call("initiator")["iqn"]


def export_to(ctx, volume, initiator):
    ds = volume.ds
    args = ["--vg", ds.vg, "--lv", volume.lv, "--initiator", initiator,
            "--iqn-base", ds.iqn_base, *ds.chap_args()]
    if volume.readonly:
        args.append("--readonly")
    return ctx.node(ds.storage_host).call("export", *args)


def attach(ctx, host, volume, link_path):
    """Export `volume` to `host` only and link its device at `link_path` on the host."""
    initiator = initiator_of(ctx, host)
    exported = export_to(ctx, volume, initiator)
    log.info(f"{volume.vg}/{volume.lv} exported to {host} as {exported['iqn']}")
    result = ctx.node(host).call(
        "attach", "--portal", volume.ds.portal, "--iqn", exported["iqn"],
        "--serial", exported["serial"], "--link", link_path, *volume.ds.chap_args(),
        "--timeout", ctx.settings.attach_timeout,
        timeout=ctx.settings.attach_timeout + ctx.settings.ssh_timeout)
    log.info(f"{host}:{link_path} -> {result.get('device')}")
    return result


def detach(ctx, host, volume, link_path=None, unexport=True):
    """Unlink and log `host` out of `volume`'s target, then revoke the host's ACL (and drop the
    target when no ACL is left). A host that cannot be reached (crashed) loses every ACL of the
    target instead: nothing may keep writing through a session we can no longer see."""
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


def unexport_from(ctx, volume, initiator=None):
    ds = volume.ds
    args = ["--vg", ds.vg, "--lv", volume.lv, "--iqn-base", ds.iqn_base]
    if initiator:
        args += ["--initiator", initiator]
    return ctx.node(ds.storage_host).call("unexport", *args)
