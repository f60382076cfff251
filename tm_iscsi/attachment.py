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

The second call of each pair starts with the first (remote.begin: a detach's only when nothing
is flushed) and is given its arguments when the first answers: its ssh session, sudo, Python
start and imports cost the action nothing then.

The host's initiator name comes from oned (the host's ISCSI_INITIATOR, which the hooks record and
this module records when it had to ask), not from an extra call per action."""
from dataclasses import dataclass
from typing import Optional

from . import log, protocol, volumes
from .errors import DriverError
from .remote import NodeUnreachable, begin
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
    keep: bool = False                  # kept as a new image: its size and tags are answered


def planned(ctx, vm, disk_id, volume, link=None, **extra):
    """An Attach of disk `disk_id` with the cache mode its datastore and template ask for."""
    mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    return Attach(volume, link, mode, image_lv, **extra)


def _by_datastore(items):
    groups = {}
    for item in items:
        groups.setdefault(item.volume.ds.ds_id, []).append(item)
    return list(groups.values())


def _call(ctx, node, command, requests, stdins, timeout, extra=(), tail=None, started=None):
    """One call of `command` on `node` with one request per datastore; one answer each. `tail`
    (bytes) follows the requests' CHAP secrets on stdin. `started`: the call, begun already
    (remote.begin), that these arguments finish."""
    argv = [word for request in requests for word in ("--request", protocol.encode(request))]
    stdin = "".join(text for text in stdins if text) or None
    if tail is not None:
        stdin = (stdin or "").encode() + tail
    if started is None:
        answer = ctx.node(node).call(command, *argv, *extra, stdin=stdin, timeout=timeout)
    else:
        answer = started.finish(*argv, *extra, stdin=stdin)
    if len(requests) == 1:
        return [answer]
    answers = answer.get("results")
    if not isinstance(answers, list) or len(answers) != len(requests):
        raise DriverError(f"{node}: {command} answered {len(requests)} requests with "
                          f"{answer!r:.200}")
    return answers


def _per_storage_node(groups, make):
    """{storage node: [(group index, request)]}: the datastores of one storage node go to it in
    one call."""
    calls = {}
    for index, group in enumerate(groups):
        calls.setdefault(group[0].volume.ds.storage_host, []).append((index, make(group)))
    return calls


def _storage_nodes(groups):
    return list(_per_storage_node(groups, lambda group: None))


def _storage_attach(ctx, host, initiator, groups, export=True):
    """The disks each group of `groups` was granted, in the groups' order."""
    def request(group):
        ds = group[0].volume.ds
        return protocol.StorageAttach(
            vg=ds.vg, host=host, initiator=initiator, pool=ds.pool, iqn_base=ds.iqn_base,
            chap_user=ds.chap_user, max_fill=ds.max_fill, ds_id=ds.ds_id,
            disks=[protocol.StorageDisk(
                lv=a.volume.lv, mode=a.mode, readonly=a.volume.readonly, create=a.create,
                image_lv=a.image_lv if protocol.has_read(a.mode) else None,
                retire_base=a.retire_base, wb_host=a.wb_host, wb_from=a.wb_from, map=a.map,
                export=export)
                for a in group])

    granted = [None] * len(groups)
    for node, items in _per_storage_node(groups, request).items():
        answers = _call(ctx, node, protocol.STORAGE_ATTACH, [r for _, r in items],
                        [groups[i][0].volume.ds.chap_stdin() for i, _ in items],
                        ctx.settings.transaction_timeout)
        for (index, _), answer in zip(items, answers):
            granted[index] = answer.get("disks", [])
    return granted


def _host_attach(ctx, host, initiator, groups, granted, unpack=None, started=None):
    requests = []
    for group, got_group in zip(groups, granted):
        ds = group[0].volume.ds
        disks = []
        for want, got in zip(group, got_group):
            disks.append(protocol.HostDisk(
                name=want.volume.lv, mode=got["mode"], link=want.link,
                base_key=got.get("base_key"),
                wb_size_mib=ds.writeback_mib if protocol.has_writeback(got["mode"]) else None,
                wb_epoch=got.get("wb_epoch") if protocol.has_writeback(got["mode"]) else None,
                size_bytes=got.get("size_bytes"),
                luns={role: protocol.Lun(**lun) for role, lun in got["luns"].items()}))
        requests.append(protocol.HostAttach(portal=ds.portal, disks=disks, initiator=initiator,
                                            chap_user=ds.chap_user))
    extra, tail = (("--unpack-dir", unpack[0]), unpack[1]) if unpack else ((), None)
    return _call(ctx, host, protocol.HOST_ATTACH, requests,
                 [group[0].volume.ds.chap_stdin() for group in groups],
                 ctx.settings.transaction_timeout, extra, tail, started)


def attach(ctx, host, disks, unpack=None):
    """Give `host` every disk of `disks` (Attach), in one call per storage node and one to the
    host whatever the datastores; returns the mode each was assembled in (a read layer is
    dropped when the disk's region map cannot be trusted). `unpack` (path, tar bytes): the VM
    directory the host unpacks in the same call, before the disks (a live migration)."""
    groups = _by_datastore(disks)
    if not groups:
        return []
    # The host's call starts first and waits for what the storage nodes grant: its ssh session,
    # sudo and Python start meanwhile. Its time covers theirs, one transaction each.
    started = begin(ctx.node(host), protocol.HOST_ATTACH,
                    timeout=ctx.settings.transaction_timeout * (1 + len(_storage_nodes(groups))))
    try:
        initiator = ctx.initiator(host)
        granted = _storage_attach(ctx, host, initiator, groups)
        answers = _host_attach(ctx, host, initiator, groups, granted, unpack, started)
    finally:
        started.abandon()   # not finished (a storage node failed): the host changes nothing
    stale = next((a for a in answers if a.get("initiator_mismatch")), None)
    if stale is not None:
        # oned's record of the host's name is out of date (host re-installed): export to the
        # real one, take the old one's ACLs back, remember the real one.
        real = ctx.learn_initiator(host, stale["initiator"])
        log.info(f"{host}'s initiator is {real}, not {initiator} as recorded; exporting again")
        granted = _storage_attach(ctx, host, real, groups)
        answers = _host_attach(ctx, host, real, groups, granted, unpack)
        if any(a.get("initiator_mismatch") for a in answers):
            raise DriverError(f"{host} changed its initiator name during the action")
        _storage_release(ctx, host, initiator, [[Release(a.volume) for a in g] for g in groups])
    for group, answer in zip(groups, answers):
        for want, got in zip(group, answer.get("disks", [])):
            log.info(f"{host}:{want.link or want.volume.lv} -> {got.get('top')} "
                     f"({got.get('mode')})")
    return [g["mode"] for got_group in granted for g in got_group]


def attach_one(ctx, host, volume, link, mode="none", image_lv=None, **extra):
    return attach(ctx, host, [Attach(volume, link, mode, image_lv, **extra)])[0]


def prepare(ctx, host, disks):
    """storage-attach without exports: the LVs and guards only (nothing for a host yet)."""
    groups = _by_datastore(disks)
    if groups:
        _storage_attach(ctx, host, None, groups, export=False)


# -- detach -------------------------------------------------------------------------------------

def _host_detach(ctx, host, groups, remove_dir=None):
    requests = []
    for index, group in enumerate(groups):
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
        # The directory goes with the last of the disks.
        last = index == len(groups) - 1
        requests.append(protocol.HostDetach(portal=ds.portal, disks=disks,
                                            remove_dir=remove_dir if last else None))
    return _call(ctx, host, protocol.HOST_DETACH, requests, [], ctx.settings.copy_timeout)


def _storage_release(ctx, host, initiator, groups, torn=None, reachable=True, started=None):
    """`started`: {storage node: its storage-release, begun already (remote.begin)}."""
    torn = torn or {}
    started = started or {}

    def request(group):
        ds = group[0].volume.ds
        disks = []
        for r in group:
            released = torn.get(r.volume.lv, {}).get("base_released")
            disks.append(protocol.ReleaseDisk(
                lv=r.volume.lv, unexport=r.unexport, remove=r.remove,
                wb_clear=reachable and not r.keep_wb_guard, map=r.map, wb_host=r.wb_host,
                release_base_of=r.image_lv if released else None, keep=r.keep))
        return protocol.StorageRelease(vg=ds.vg, host=host, initiator=initiator,
                                       iqn_base=ds.iqn_base, disks=disks)

    released = {}
    try:
        for node, items in _per_storage_node(groups, request).items():
            for answer in _call(ctx, node, protocol.STORAGE_RELEASE, [r for _, r in items], [],
                                ctx.settings.transaction_timeout, started=started.get(node)):
                released.update({d["lv"]: d for d in answer.get("disks", []) if "lv" in d})
    finally:
        for call in started.values():
            call.abandon()
    return released


def detach(ctx, host, releases, remove_dir=None):
    """Take every disk of `releases` (Release) back from `host`, in one call to the host and one
    per storage node: its stack first (write-back data flushed to the storage node, or dropped
    when `flush` is False), then the LUNs; and the VM directory `remove_dir` with the last of
    them. Returns whether the directory went."""
    return detach_and_report(ctx, host, releases, remove_dir)[0]


def detach_and_report(ctx, host, releases, remove_dir=None):
    """detach(), returning (whether the directory went, {LV: the storage node's answer for
    it}): a kept disk's answer carries its size and tags."""
    groups = _by_datastore(releases)
    if not groups:
        return False, {}
    torn, initiator, reachable, dir_removed, released = {}, None, True, False, {}
    started = {}
    if ctx.is_frontend(host):
        # The front-end holds no session: nothing of a host's to revoke (a shared CD-ROM's ACLs
        # are other hosts'); only what the VM owned goes.
        reachable = False
        groups = [[Release(**{**r.__dict__, "unexport": False}) for r in group]
                  for group in groups]
        groups = [g for g in groups if any(r.remove or r.map != "keep" for r in g)]
    else:
        # Without a flush the host's call is short: each storage node's call starts meanwhile
        # and waits for its answer (an ssh session kept idle through a long flush would not
        # be worth the second it saves).
        if not any(r.flush for group in groups for r in group):
            for node in _storage_nodes(groups):
                started[node] = begin(ctx.node(node), protocol.STORAGE_RELEASE,
                                      timeout=ctx.settings.copy_timeout +
                                      ctx.settings.transaction_timeout)
        try:
            answers = _host_detach(ctx, host, groups, remove_dir)
            dir_removed = any(a.get("dir_removed") is not None for a in answers)
            torn = {d["name"]: d for a in answers for d in a.get("disks", [])}
            initiator = next((a["initiator"] for a in answers if a.get("initiator")),
                             None) or ctx.initiator(host)
        except NodeUnreachable as err:
            reachable = False
            log.info(f"{err}; its cache stacks stay until it boots, and every ACL of "
                     f"{', '.join(r.volume.lv for g in groups for r in g)} is revoked")
        except BaseException:
            for call in started.values():
                call.abandon()
            raise
    if groups:
        released = _storage_release(ctx, host, initiator, groups, torn, reachable, started)
    return dir_removed, released


def detach_one(ctx, host, volume, link=None, **extra):
    detach(ctx, host, [Release(volume, link, **extra)])


def release_storage(ctx, host, releases):
    """storage-release alone: a host that is not involved (the front-end), a map to forget."""
    groups = _by_datastore(releases)
    if groups:
        _storage_release(ctx, host, None, groups, reachable=False)


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
