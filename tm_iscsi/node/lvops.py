"""The storage node's LV operations, each bringing one LV to a wanted state from whatever state
it is in (so a re-run after a failure converges). Callers hold the VG's lock and pass the VG
report they read under it; the single-LV commands (cmd_storage) and the transactions
(txn_storage) are both made of these."""
from .. import naming, protocol
from . import confine, lvm
from . import run as _run
from .errors import NodeError

MIB = 1024 * 1024
FILESYSTEMS = protocol.FILESYSTEMS
_OWNER_KEYS = tuple(protocol.owner_tag(key, "") for key in protocol.OWNER_KEYS)


def owner_tags(tags):
    return sorted(t for t in tags if t.startswith(_OWNER_KEYS))


def require_pool(rep, pool):
    lv = rep.get(pool)
    if lv is None or not lv.is_thin_pool:
        raise NodeError(f"thin pool {rep.name}/{pool} does not exist; run pool-ensure --vg "
                        f"{rep.name} --pool {pool} first")
    return lv


def require_lv(rep, name, verb=None):
    """The LV; with `verb`, only when it is tm_iscsi's (confine.require_owned)."""
    lv = rep.get(name)
    if lv is None:
        raise NodeError(f"logical volume {rep.name}/{name} does not exist")
    return confine.require_owned(lv, verb) if verb else lv


def stamped(tags):
    """Every LV the helper makes carries the ownership tag, whatever it was asked."""
    return sorted(set(tags or []) | {naming.OWNER_TAG})


def check_fill(rep, pool, max_fill):
    """Refuse new allocations in a pool that is nearly full: a thin pool that runs out of space
    stops every LV in it, images and running VMs alike."""
    status = lvm.pool_status(rep, pool)
    if status["data_percent"] > max_fill or status["metadata_percent"] > max_fill:
        raise NodeError(f"thin pool {rep.name}/{pool} is too full: data {status['data_percent']}%"
                        f", metadata {status['metadata_percent']}% (limit {max_fill}%); free "
                        "space (delete images or VMs) or extend the pool")


def ensure_active(lv):
    if not lv.active:
        _run.info(f"activating {lv.vg}/{lv.name}")
        lvm.activate(lv.vg, lv.name)


def ensure_snapshot(rep, origin_name, name, tags, max_fill, size_mib=None):
    """`name` as a thin snapshot of `origin_name` (O(1)), grown to `size_mib` if asked.
    Returns (size in bytes, created)."""
    vg = rep.name
    tags = stamped(tags)
    # A snapshot reads its origin: only of tm_iscsi's own LVs.
    origin = require_lv(rep, origin_name, "snapshot")
    if not origin.is_thin:
        raise NodeError(f"{vg}/{origin_name} is not a thin LV; only thin LVs have O(1) "
                        "snapshots")
    lv = rep.get(name)
    created = False
    if lv is not None:
        if lv.origin != origin_name and not _reverted_clone(name, lv):
            what = f"a snapshot of {lv.origin}" if lv.origin else "an LV of its own"
            raise NodeError(f"{vg}/{name} already exists as {what}, not as a snapshot of "
                            f"{origin_name}; refusing to reuse it")
        confine.require_owned(lv, "reuse")
        size = lv.size_bytes
    else:
        confine.require_scheme(vg, name)
        check_fill(rep, origin.pool, max_fill)
        _run.info(f"creating thin snapshot {vg}/{name} of {origin_name}")
        lvm.create_snapshot(vg, origin_name, name, tags, pool_active=_pool_active(rep, origin))
        created = True
        size = origin.size_bytes
    if size_mib is not None:
        want = rep.round_up(size_mib * MIB)
        if size < want:
            _run.info(f"growing {vg}/{name} to {want} bytes")
            lvm.extend(vg, name, want)
            size = want
    if lv is not None:
        ensure_active(lv)
    return size, created


def _reverted_clone(name, lv):
    """A clone given the content of one of its own snapshots or its checkpoint (snap_revert,
    host-lost) is still the clone: its origin is that snapshot, or none once it was removed."""
    if lv.origin:
        return lv.origin in naming.dependents_among(name, [lv.origin])
    return protocol.owner_tag("kind", "clone") in lv.tags


def ensure_thin(rep, pool, name, size_mib, tags, max_fill):
    """`name` as a new thin LV of at least `size_mib` in `pool`. Returns (size, created)."""
    vg = rep.name
    tags = stamped(tags)
    require_pool(rep, pool)
    lv = rep.get(name)
    want = rep.round_up(size_mib * MIB)
    if lv is not None:
        if not lv.is_thin or lv.pool != pool:
            raise NodeError(f"{vg}/{name} exists but is not a thin LV of pool {pool}; refusing "
                            "to reuse it")
        if lv.origin:
            raise NodeError(f"{vg}/{name} exists as a snapshot of {lv.origin}, not as a new LV; "
                            "refusing to reuse it")
        # Ownership is what the asked tags say; tags added later (guards such as
        # tm_iscsi.wb-host=) do not make the LV someone else's.
        if not set(tags) <= set(lv.tags) or owner_tags(lv.tags) != owner_tags(tags):
            raise NodeError(f"{vg}/{name} exists with tags {lv.tags or '(none)'}, not "
                            f"{tags or '(none)'}: it belongs to something else")
        size = lv.size_bytes
        if size < want:
            _run.info(f"growing {vg}/{name} from {size} to {want} bytes")
            lvm.extend(vg, name, want)
            size = want
        ensure_active(lv)
        return size, False
    confine.require_scheme(vg, name)
    check_fill(rep, pool, max_fill)
    _run.info(f"creating thin LV {vg}/{name} of {want} bytes")
    lvm.create_thin(vg, pool, name, want, tags, pool_active=_pool_active(rep, rep.get(pool)))
    return want, True


def _pool_active(rep, lv):
    """Is the thin pool of `lv` (or `lv` itself, a pool) active, as `rep` saw it?"""
    pool = rep.get(lv.pool) if lv is not None and lv.pool else lv
    return pool is not None and pool.is_thin_pool and pool.active


def fs_type(path):
    result = _run.run(["blkid", "-p", "-o", "value", "-s", "TYPE", path], timeout=60,
                      check=False, what=f"probing {path}")
    if result.returncode == 2:  # nothing found
        return None
    if result.returncode != 0:
        raise _run.failure(result, f"probing {path}")
    return result.stdout.strip() or None


def mkfs_argv(fs, path):
    if fs == "swap":
        return ["mkswap", "-f", path]
    if fs == "xfs":
        return ["mkfs.xfs", "-q", "-f", path]
    return [f"mkfs.{fs}", "-q", "-F", path]


def ensure_fs(lv, fs):
    """A filesystem of type `fs` on the LV (raw: leave it blank). True when it was made now; an
    LV that holds another filesystem is refused (it holds data)."""
    if fs not in FILESYSTEMS:
        raise NodeError(f"filesystem {fs!r} is not one of {', '.join(FILESYSTEMS)}")
    if fs == "raw":
        return False
    ensure_active(lv)
    found = fs_type(lv.path)
    if found == fs:
        return False
    if found is not None:
        raise NodeError(f"{lv.vg}/{lv.name} already holds {found} data; refusing to format it "
                        f"as {fs}")
    _run.info(f"formatting {lv.vg}/{lv.name} as {fs}")
    _run.run(mkfs_argv(fs, lv.path), timeout=1800, what=f"formatting {lv.vg}/{lv.name} as {fs}")
    return True


def remove(rep, name, verb="remove"):
    """Remove an LV that nothing exports (the caller unexported it). False if it was gone."""
    return bool(remove_all(rep, [name], verb))


def remove_all(rep, names, verb="remove"):
    """Remove those of `names` that exist, each checked as remove() checks it before any goes,
    in one lvremove. Returns the names removed; a failure part-way leaves the rest for the
    re-run."""
    lvs = [rep.get(name) for name in names]
    lvs = [lv for lv in lvs if lv is not None]
    for lv in lvs:
        if lv.is_thin_pool:
            raise NodeError(f"{rep.name}/{lv.name} is the thin pool; tm_iscsi removes volumes, "
                            "not pools")
        confine.require_owned(lv, verb)
        require_unexported(rep, lv)
    if not lvs:
        return []
    removed = [lv.name for lv in lvs]
    _run.info(f"removing {', '.join(f'{rep.name}/{name}' for name in removed)}")
    lvm.remove(rep.name, *removed)
    return removed


def replace_with_snapshot(rep, name, snap_name, tags, max_fill):
    """`name` becomes a new thin snapshot of `snap_name` (a disk or image reverted to one of its
    snapshots), made before the old content goes: the new LV is complete under a scratch name
    (naming.replacement_lv) before the swap (two renames), and a refusal (a pool over its fill
    limit) or a crash at any point leaves the old content intact under the LV's name or under
    naming.replaced_lv, from where the next run restores it first. Returns the new size."""
    vg = rep.name
    scratch, previous = naming.replacement_lv(name), naming.replaced_lv(name)
    snap = rep.get(snap_name)
    if snap is None:
        raise NodeError(f"snapshot {vg}/{snap_name} does not exist; {vg}/{name} is unchanged")
    confine.require_owned(snap, "revert to")
    current = rep.get(name)
    if current is not None:
        confine.require_owned(current, "revert")
        require_unexported(rep, current)
    elif rep.get(previous) is None:
        raise NodeError(f"{vg}/{name} does not exist; nothing to revert")
    # A run that stopped half-way: its old content back under the LV's name, its scratch gone.
    if current is None:
        _run.info(f"restoring {vg}/{name} from {previous} (an earlier revert stopped)")
        lvm.rename(vg, previous, name)
    elif rep.get(previous) is not None:
        remove(rep, previous, "remove")
    if rep.get(scratch) is not None:
        remove(rep, scratch, "remove")
    check_fill(rep, snap.pool, max_fill)
    _run.info(f"creating {vg}/{scratch}, a thin snapshot of {snap_name}")
    lvm.create_snapshot(vg, snap_name, scratch, stamped(tags))
    lvm.rename(vg, name, previous)
    lvm.rename(vg, scratch, name)
    _run.info(f"removing the replaced content of {vg}/{name}")
    lvm.remove(vg, previous)
    return snap.size_bytes


def require_unexported(rep, lv):
    from . import lio
    with lio.config_lock():
        users = lio.users_of_device(lv.path, naming.backstore_name(rep.name, lv.name))
    if users:
        names = [", ".join(iqns) or f"backstore {so}" for so, iqns in users]
        raise NodeError(f"{rep.name}/{lv.name} is still exported through LIO "
                        f"({'; '.join(names)}); unexport it first")
