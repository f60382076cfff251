"""The storage node's half of write-back checkpoints (tm_iscsi.protocol, "write-back
checkpoints"): `checkpoint-take` snapshots each clone as `<lv>-ckpt-next`, `checkpoint-commit`
makes a valid one the disk's checkpoint (`<lv>-ckpt`), and `host-lost` gives each disk a lost
host held write-back data of its checkpoint's content.

A checkpoint replaces the previous one by two renames (`-ckpt` -> `-ckpt-prev`, `-ckpt-next` ->
`-ckpt`) before the previous one is removed, so a commit stopped at any point leaves a valid
checkpoint under `-ckpt` or `-ckpt-prev`; `-ckpt-next` alone is never one (its snapshot may not
have been cut at a clean instant). Checkpoints are inactive LVs (nothing reads them until a host
is lost), tagged with the host whose write-back data they bound and the time they were cut."""
import secrets
import time

from .. import naming, protocol
from ..protocol import CKPT_AT_TAG, CKPT_HOST_TAG, WB_EPOCH_TAG, WB_HOST_TAG, tag_value
from . import confine, lio, locks, lvm, lvops
from . import run as _run
from .cli import checked_command as command, each_request
from .cli import request_option as _request_option
from .errors import NodeError
from .txn_storage import _need, _unexport_all, check_iqn_base, check_vg_host

_CHECKPOINT_OWNER_KEYS = ("vm", "disk", "image", "ds")


def _check_lost(req):
    check_vg_host(req)
    for iqn_base in req.iqn_bases:
        check_iqn_base(iqn_base)


def _check(req):
    check_vg_host(req)
    for lv in req.lvs:
        # A VM's disk or a persistent image, never a snapshot, base or map of tm_iscsi's.
        _need(naming.is_source_lv(lv), "LV to checkpoint", lv)


def _tags(lv, host, cut_at):
    owner = {"kind": protocol.CHECKPOINT_KIND}
    for tag in lvops.owner_tags(lv.tags):
        key, _, value = tag[len(protocol.OWNER_TAG) + 1:].partition("=")
        if key in _CHECKPOINT_OWNER_KEYS:
            owner[key] = value
    return protocol.owner_tags(**owner) + [CKPT_HOST_TAG + host, f"{CKPT_AT_TAG}{int(cut_at)}"]


def _guarded_by(rep, req, name):
    lv = lvops.require_lv(rep, name, "checkpoint")
    owner = tag_value(lv.tags, WB_HOST_TAG)
    if owner != req.host:
        held = f"on {owner}" if owner else "on no host"
        raise NodeError(f"{req.vg}/{name} has its write-back data {held}, not on {req.host}; "
                        "nothing to checkpoint for that host")
    return lv


# -- checkpoint-take ----------------------------------------------------------------------------

@command(protocol.CHECKPOINT_TAKE, "snapshot each write-back clone as its next checkpoint")
def checkpoint_take(args):
    return each_request(protocol.CheckpointTake, args.request, _check, _take)


def _take(req):
    with locks.lock("vg", req.vg):
        rep = lvm.report(req.vg)
        lvs = [_guarded_by(rep, req, name) for name in req.lvs]
        for lv in lvs:
            if not lv.is_thin:
                raise NodeError(f"{req.vg}/{lv.name} is not a thin LV; checkpoints need thin "
                                "snapshots")
            # Left by a run that failed after making it: never cut at this run's instant.
            stale = naming.replacement_lv(naming.checkpoint_lv(lv.name))
            if rep.get(stale) is not None:
                lvops.remove(rep, stale)
        lvops.check_fill(rep, lvs[0].pool, req.max_fill)
        out = []
        for lv in lvs:
            cut_at = time.time()
            started = time.monotonic()
            name = naming.replacement_lv(naming.checkpoint_lv(lv.name))
            lvm.create_snapshot(req.vg, lv.name, name, lvops.stamped(_tags(lv, req.host, cut_at)),
                                active=False)
            out.append({"lv": lv.name, "snapshot": name, "cut_at": round(cut_at, 3),
                        "seconds": round(time.monotonic() - started, 3)})
    return {"vg": req.vg, "disks": out}


checkpoint_take.configure = _request_option


# -- checkpoint-commit --------------------------------------------------------------------------

@command(protocol.CHECKPOINT_COMMIT, "make each valid snapshot its disk's checkpoint; drop others")
def checkpoint_commit(args):
    return each_request(protocol.CheckpointCommit, args.request, _check, _commit)


checkpoint_commit.configure = _request_option


def _commit(req):
    out = []
    with locks.lock("vg", req.vg):
        rep = lvm.report(req.vg)
        for name in req.lvs:
            out.append(_commit_one(rep, req, name))
    return {"vg": req.vg, "disks": out}


def _commit_one(rep, req, name):
    ckpt = naming.checkpoint_lv(name)
    new, old = naming.replacement_lv(ckpt), naming.replaced_lv(ckpt)
    found = {n: rep.get(n) for n in (new, ckpt, old)}
    for lv in found.values():
        if lv is not None:
            confine.require_owned(lv, "commit")
    if not req.valid:
        return {"lv": name, "committed": False, "removed": lvops.remove(rep, new)}
    if found[new] is not None:
        if found[ckpt] is not None:
            if found[old] is not None:
                lvm.remove(req.vg, old)     # an earlier commit's: -ckpt was the valid one
            lvm.rename(req.vg, ckpt, old)
            found[old] = found[ckpt]
        lvm.rename(req.vg, new, ckpt)
        kept = found[new]
    elif found[ckpt] is not None:
        kept = found[ckpt]                  # committed by an earlier run
    elif found[old] is not None:
        lvm.rename(req.vg, old, ckpt)       # an earlier run stopped between its renames
        kept, found[old] = found[old], None
    else:
        return {"lv": name, "committed": False, "removed": False}
    if found[old] is not None:
        lvm.remove(req.vg, old)
    return {"lv": name, "committed": True, "checkpoint": ckpt,
            "cut_at": protocol.checkpoint_cut_at(kept.tags)}


# -- host-lost ----------------------------------------------------------------------------------

def last_checkpoint(rep, name, host):
    """The disk's checkpoint for `host` (an LV report row), or None. A commit that stopped
    between its renames left it as -ckpt-prev; a checkpoint another host's data was cut for
    bounds nothing of this one's."""
    ckpt = naming.checkpoint_lv(name)
    for candidate in (ckpt, naming.replaced_lv(ckpt)):
        lv = rep.get(candidate)
        if lv is not None and tag_value(lv.tags, CKPT_HOST_TAG) == host:
            return lv
    return None


@command(protocol.HOST_LOST, "give each disk a lost host held write-back data of its checkpoint")
def host_lost(args):
    return each_request(protocol.HostLost, args.request, _check_lost, _host_lost)


def _host_lost(req):
    now = time.time()
    out = []
    with locks.lock("vg", req.vg):
        rep = lvm.report(req.vg)
        guarded = sorted(_guarded_disks(rep, req.host))
        for name in guarded:
            lv = rep.get(name) or rep.get(naming.replaced_lv(name))
            confine.require_owned(lv, "recover")
        for name in guarded:
            out.append(_recover(rep, req, name, now))
    return {"vg": req.vg, "host": req.host, "disks": out}


def _guarded_disks(rep, host):
    """The disks whose guard names `host`; a disk whose revert stopped before its old content
    (still guarded, as <lv>-prev) was removed is one of them too: the revert is redone."""
    names = set()
    for name, lv in rep.lvs.items():
        if tag_value(lv.tags, WB_HOST_TAG) != host:
            continue
        disk = name if naming.is_source_lv(name) else naming.replaced_of(name)
        if disk is not None and naming.is_source_lv(disk):
            names.add(disk)
    return names


def _recover(rep, req, name, now):
    lv = rep.get(name) or rep.get(naming.replaced_lv(name))
    ckpt = last_checkpoint(rep, name, req.host)
    if ckpt is None and not req.without_checkpoint:
        return {"lv": name, "recovered": False,
                "reason": f"no checkpoint of {req.host}'s write-back data; it stays guarded"}
    # The lost host's targets go (its ACLs went with the fence); the next attach exports anew.
    with lio.config_lock():
        changed = lio.Changed()
        for export in (name, protocol.map_lv(name)):
            for iqn_base in req.iqn_bases:
                changed.add(naming.target_iqn(req.vg, export, iqn_base),
                            naming.backstore_name(req.vg, export))
                _unexport_all(req.vg, export, iqn_base)
        lio.save_config(changed=changed)
    # A new epoch: the lost host's write-back cache of this disk, should the host come back,
    # is dropped by its next assemble instead of written over the recovered content.
    epoch = WB_EPOCH_TAG + secrets.token_hex(8)
    keep_tags = [t for t in lv.tags if not t.startswith((WB_HOST_TAG, WB_EPOCH_TAG))] + [epoch]
    result = {"lv": name, "recovered": True}
    if ckpt is not None:
        cut_at = protocol.checkpoint_cut_at(ckpt.tags)
        _run.info(f"{req.vg}/{name}: back to its checkpoint {ckpt.name}")
        # The new content is made without the guard: once it has the disk's name, a re-run
        # finds nothing guarded; a run stopped before that redoes the revert to the same
        # checkpoint.
        lvops.replace_with_snapshot(rep, name, ckpt.name, keep_tags, req.max_fill)
        result.update(checkpoint=ckpt.name, cut_at=cut_at,
                      age_seconds=round(now - cut_at) if cut_at else None)
    else:
        _run.info(f"{req.vg}/{name}: kept as it is (no checkpoint; not crash-consistent)")
        if rep.get(name) is None:
            raise NodeError(f"{req.vg}/{name} is only left as {naming.replaced_lv(name)}: run "
                            "host-lost again with its checkpoint")
        lvm.change_tags(req.vg, name, [epoch],
                        [t for t in lv.tags if t.startswith((WB_HOST_TAG, WB_EPOCH_TAG))])
        result.update(checkpoint=None, cut_at=None, age_seconds=None)
    return result


host_lost.configure = _request_option
