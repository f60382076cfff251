"""Giving a host VM disks and taking them back, in two node transactions each way
(tm_iscsi.protocol), whatever the number of disks and their cache modes:

    attach   storage-attach on the storage node: the LVs made or found, the image's base and the
             clone's region map for a read layer, the write-back guard, the LUNs exported to the
             host's initiator only; then host-attach on the host: logins, serials checked, cache
             stacks built, links pointed.
    detach   host-detach on the host: stacks flushed (or dropped for a disk deleted next), logouts,
             links removed; then storage-release: the host's ACLs revoked (every ACL when the host
             cannot be reached: nothing may keep writing through a session we can no longer
             see), guards cleared, what the VM owned removed.

The host's initiator name comes from oned (the host's ISCSI_INITIATOR, which the hooks record and
this module records when it had to ask), not from an extra call per action."""
from dataclasses import dataclass
from typing import Optional

from . import log, protocol, volumes
from .errors import DriverError
from .remote import NodeUnreachable
from .volumes import Volume


@dataclass
class Attach:
    """One disk for `attach`."""
    volume: Volume
    link: Optional[str] = None
    mode: str = "none"
    image_lv: Optional[str] = None      # the image a clone's read layer caches
    create: Optional[dict] = None       # protocol.StorageDisk.create
    retire_base: bool = False
    wb_host: Optional[str] = None       # the write-back guard moves here (live migration) ...
    wb_from: Optional[str] = None       # ... from this host, which flushed
    map: str = "keep"


@dataclass
class Release:
    """One disk for `detach`."""
    volume: Volume
    link: Optional[str] = None
    flush: bool = True
    image_lv: Optional[str] = None
    unexport: bool = True
    remove: bool = False
    keep_wb_guard: bool = False
    map: str = "keep"
    wb_host: Optional[str] = None       # the write-back guard moves back here (failed migration)


def planned(ctx, vm, disk_id, volume, link=None, **extra):
    """An Attach of disk `disk_id` with the cache mode its datastore and template ask for."""
    mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    return Attach(volume, link, mode, image_lv, **extra)


def _by_datastore(items):
    groups = {}
    for item in items:
        groups.setdefault(item.volume.ds.ds_id, []).append(item)
    return list(groups.values())


def _storage_attach(ctx, host, initiator, group, export=True):
    ds = group[0].volume.ds
    request = protocol.StorageAttach(
        vg=ds.vg, host=host, initiator=initiator, pool=ds.pool, iqn_base=ds.iqn_base,
        chap_user=ds.chap_user, max_fill=ds.max_fill, ds_id=ds.ds_id,
        disks=[protocol.StorageDisk(
            lv=a.volume.lv, mode=a.mode, readonly=a.volume.readonly, create=a.create,
            image_lv=a.image_lv if protocol.has_read(a.mode) else None,
            retire_base=a.retire_base, wb_host=a.wb_host, wb_from=a.wb_from, map=a.map,
            export=export)
            for a in group])
    result = ctx.node(ds.storage_host).call(protocol.STORAGE_ATTACH, "--request",
                                            protocol.encode(request), stdin=ds.chap_stdin(),
                                            timeout=ctx.settings.transaction_timeout)
    return result.get("disks", [])


def _host_attach(ctx, host, initiator, group, granted):
    ds = group[0].volume.ds
    disks = []
    for want, got in zip(group, granted):
        disks.append(protocol.HostDisk(
            name=want.volume.lv, mode=got["mode"], link=want.link, base_key=got.get("base_key"),
            wb_size_mib=ds.writeback_mib if protocol.has_writeback(got["mode"]) else None,
            luns={role: protocol.Lun(**lun) for role, lun in got["luns"].items()}))
    request = protocol.HostAttach(portal=ds.portal, disks=disks, initiator=initiator,
                                  chap_user=ds.chap_user)
    return ctx.node(host).call(protocol.HOST_ATTACH, "--request", protocol.encode(request),
                               stdin=ds.chap_stdin(), timeout=ctx.settings.transaction_timeout)


def attach(ctx, host, disks):
    """Give `host` every disk of `disks` (Attach); returns the mode each was assembled in (a
    read layer is dropped when the disk's region map cannot be trusted)."""
    modes = []
    for group in _by_datastore(disks):
        initiator = ctx.initiator(host)
        granted = _storage_attach(ctx, host, initiator, group)
        answer = _host_attach(ctx, host, initiator, group, granted)
        if answer.get("initiator_mismatch"):
            # oned's record of the host's name is out of date (host re-installed): export to
            # the real one, take the old one's ACLs back, remember the real one.
            real = ctx.learn_initiator(host, answer["initiator"])
            log.info(f"{host}'s initiator is {real}, not {initiator} as recorded; exporting again")
            granted = _storage_attach(ctx, host, real, group)
            answer = _host_attach(ctx, host, real, group, granted)
            if answer.get("initiator_mismatch"):
                raise DriverError(f"{host} changed its initiator name during the action")
            _storage_release(ctx, host, initiator, [Release(a.volume) for a in group])
        for want, got in zip(group, answer.get("disks", [])):
            log.info(f"{host}:{want.link or want.volume.lv} -> {got.get('top')} "
                     f"({got.get('mode')})")
        modes += [g["mode"] for g in granted]
    return modes


def attach_one(ctx, host, volume, link, mode="none", image_lv=None, **extra):
    return attach(ctx, host, [Attach(volume, link, mode, image_lv, **extra)])[0]


def prepare(ctx, host, disks):
    """storage-attach without exports: the LVs and guards only (nothing for a host yet)."""
    for group in _by_datastore(disks):
        _storage_attach(ctx, host, None, group, export=False)


# -- detach -------------------------------------------------------------------------------------

def _host_detach(ctx, host, group, remove_dir=None):
    ds = group[0].volume.ds
    disks = []
    for r in group:
        v = r.volume
        luns = {"clone": protocol.Lun(v.iqn, v.serial)}
        if v.kind == "clone":
            mapv = Volume(ds, protocol.map_lv(v.lv), "map")
            luns["map"] = protocol.Lun(mapv.iqn, mapv.serial)
        prefix = None
        if r.image_lv:
            base = Volume(ds, protocol.base_lv(r.image_lv), "base")
            luns["base"] = protocol.Lun(base.iqn, base.serial)
            prefix = protocol.base_key_prefix(ds.vg, r.image_lv)
        disks.append(protocol.HostRelease(name=v.lv, flush=r.flush, luns=luns, link=r.link,
                                          base_prefix=prefix))
    request = protocol.HostDetach(portal=ds.portal, disks=disks, remove_dir=remove_dir)
    return ctx.node(host).call(protocol.HOST_DETACH, "--request", protocol.encode(request),
                               timeout=ctx.settings.copy_timeout)


def _storage_release(ctx, host, initiator, group, torn=None, reachable=True):
    ds = group[0].volume.ds
    torn = torn or {}
    disks = []
    for r in group:
        released = torn.get(r.volume.lv, {}).get("base_released")
        disks.append(protocol.ReleaseDisk(
            lv=r.volume.lv, unexport=r.unexport, remove=r.remove,
            wb_clear=reachable and not r.keep_wb_guard, map=r.map, wb_host=r.wb_host,
            release_base_of=r.image_lv if released else None))
    request = protocol.StorageRelease(vg=ds.vg, host=host, initiator=initiator,
                                      iqn_base=ds.iqn_base, disks=disks)
    return ctx.node(ds.storage_host).call(protocol.STORAGE_RELEASE, "--request",
                                          protocol.encode(request),
                                          timeout=ctx.settings.transaction_timeout)


def detach(ctx, host, releases, remove_dir=None):
    """Take every disk of `releases` (Release) back from `host`: its stack first (write-back
    data flushed to the storage node, or dropped when `flush` is False), then the LUNs; and the
    VM directory `remove_dir` with the last of them. Returns whether the directory went."""
    groups = _by_datastore(releases)
    dir_removed = False
    for index, group in enumerate(groups):
        torn, initiator, reachable = {}, None, True
        if ctx.is_frontend(host):
            # The front-end holds no session: nothing of a host's to revoke (a shared CD-ROM's
            # ACLs are other hosts'); only what the VM owned goes.
            group = [Release(**{**r.__dict__, "unexport": False}) for r in group]
        else:
            try:
                last = index == len(groups) - 1
                answer = _host_detach(ctx, host, group, remove_dir if last else None)
                dir_removed = dir_removed or bool(answer.get("dir_removed") is not None)
                torn = {d["name"]: d for d in answer.get("disks", [])}
                initiator = answer.get("initiator") or ctx.initiator(host)
            except NodeUnreachable as err:
                reachable = False
                log.info(f"{err}; its cache stacks stay until it boots, and every ACL of "
                         f"{', '.join(r.volume.lv for r in group)} is revoked")
        if ctx.is_frontend(host):
            reachable = False
            if not any(r.remove or r.map != "keep" for r in group):
                continue
        _storage_release(ctx, host, initiator, group, torn, reachable)
    return dir_removed


def detach_one(ctx, host, volume, link=None, **extra):
    detach(ctx, host, [Release(volume, link, **extra)])


def release_storage(ctx, host, releases):
    """storage-release alone: a host that is not involved (the front-end), a map to forget."""
    for group in _by_datastore(releases):
        _storage_release(ctx, host, None, group, reachable=False)


# -- write-back around a snapshot or save-as ---------------------------------------------------

def _has_writeback_on_host(ctx, vm, disk_id, volume, host):
    mode, _ = volumes.cache_plan(vm, disk_id, volume)
    return protocol.has_writeback(mode) and not ctx.is_frontend(host)


def flush_if_cached(ctx, vm, disk_id, volume, host):
    """flush() when the disk has a write-back layer on a host: before a snapshot or a save-as of
    the storage node's LV."""
    if _has_writeback_on_host(ctx, vm, disk_id, volume, host):
        flush(ctx, host, volume)


def resume_writeback(ctx, vm, disk_id, volume, host):
    """After flush_if_cached and a live snapshot: the running disk's stack caches writes again."""
    if _has_writeback_on_host(ctx, vm, disk_id, volume, host):
        ctx.node(host).call("stack-writeback", "--name", volume.lv)


def flush(ctx, host, *volumes_to_flush):
    """Write the host's dirty blocks of the volumes back to the storage node, keeping their
    stacks (and keeping them clean from now on), in one call: before a snapshot, a save-as, a
    live migration."""
    if ctx.is_frontend(host) or not volumes_to_flush:
        return None
    names = [w for v in volumes_to_flush for w in ("--name", v.lv)]
    return ctx.node(host).call("stack-flush", *names,
                               "--timeout", max(1, ctx.settings.copy_timeout - 30),
                               timeout=ctx.settings.copy_timeout)
