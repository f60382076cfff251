"""The per-disk write-back cache: dm-cache (smq, writeback) over the disk's clone LUN, with its
data and metadata on two LVs of the local cache VG.

Flush: the table is reloaded with the `cleaner` policy in writethrough mode, which writes every
dirty block back to the clone and sends new writes through; the dirty count in the status is
polled until it is 0. Afterwards the cache stays clean (writethrough), so a flushed disk can be
handed over (migration, snapshot) without a race; assembling the stack again restores writeback.
Drop: the device is removed without writing anything back, only when asked.
"""
import time

from tm_iscsi.node import lvm
from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError

from . import dmsetup, localvg, state, tables
from . import status as dmstatus

DM_PREFIX = "tmi-wb-"
BLOCK_SECTORS = tables.BLOCK_SECTORS
# No migration bandwidth while the VM runs: smq still promotes the blocks it chooses (queued
# promotions do not wait for it), but it never writes dirty blocks back on its own (it would,
# whenever the disk is idle for a second). Written blocks stay on the host until the flush, and a
# block rewritten many times crosses the network once. Once the cache is full of dirty blocks,
# writes to other blocks go straight to the clone: slower, never wrong.
RUNNING_CORE_ARGS = {"migration_threshold": 0}
# A flush may move this many sectors at once (1 MiB, the kernel's default, makes it crawl).
FLUSH_MIGRATION_SECTORS = 65536
MIN_SIZE_BYTES = 64 << 20
# A checkpoint writes dirty blocks back in write-back mode until this much is left (or the
# count stops falling for these many polls: the VM rewrites faster than the network takes).
PREDRAIN_LEFT_BYTES = 16 << 20
PREDRAIN_STALLED_POLLS = 8
POLL_SECONDS = 0.25
PROGRESS_SECONDS = 2.0


def dm_name(stack):
    return DM_PREFIX + stack


def lv_names(stack):
    return f"wb-{stack}-data", f"wb-{stack}-meta"


def plan(vg, stack, size_bytes):
    data_lv, meta_lv = lv_names(stack)
    return state.WriteBack(vg=vg, data_lv=data_lv, meta_lv=meta_lv, size_bytes=int(size_bytes),
                           block_sectors=BLOCK_SECTORS)


def meta_bytes(wb):
    return tables.cache_metadata_bytes(wb.size_bytes, wb.block_sectors)


def table(wb, origin, sectors, mode="writeback", policy="smq", core_args=None):
    core_args = RUNNING_CORE_ARGS if core_args is None else core_args
    return tables.cache(sectors, lvm.lv_path(wb.vg, wb.meta_lv), lvm.lv_path(wb.vg, wb.data_lv),
                        origin, wb.block_sectors, mode=mode, policy=policy, core_args=core_args)


def lvs_present(wb, rep):
    return rep.get(wb.data_lv) is not None and rep.get(wb.meta_lv) is not None


def allocate(wb, stack):
    """Both LVs (the caller holds the VG lock and made room)."""
    lv_tags = localvg.tags("writeback", stack=stack)
    localvg.allocate(wb.vg, wb.meta_lv, meta_bytes(wb), lv_tags)
    localvg.allocate(wb.vg, wb.data_lv, wb.size_bytes, lv_tags)


def free(wb, rep=None):
    """Both LVs gone (True if any was there). Never while the device exists. `rep`: the VG as
    the caller has just read it, if it has."""
    rep = rep or lvm.local_report(wb.vg, missing_ok=True)
    if rep is None:
        return False
    return bool(localvg.release_all(wb.vg, [wb.data_lv, wb.meta_lv], rep))


def read_status(name):
    text = dmsetup.status(name)
    if text is None:
        return None
    st = dmstatus.of(name, text)
    if not isinstance(st, dmstatus.CacheStatus):
        raise NodeError(f"dm device {name} is not a dm-cache device")
    return st


def matches(live_table, wb, origin, sectors):
    """Is the live device this cache over this origin (whatever its mode and policy now)?"""
    try:
        t = tables.parse(live_table)
        want = (tables.devno(lvm.lv_path(wb.vg, wb.meta_lv)),
                tables.devno(lvm.lv_path(wb.vg, wb.data_lv)), tables.devno(origin))
    except (ValueError, OSError):
        return False
    return (t.target == "cache" and t.devices == want and t.length == sectors
            and t.block_sectors == wb.block_sectors)


def caches_writes(live_table):
    """Is the cache in writeback mode, whatever its policy (a checkpoint's predrain runs the
    cleaner policy in writeback mode)?"""
    return tables.cache_mode(tables.parse(live_table).features) == "writeback"


def is_writeback(live_table):
    t = tables.parse(live_table)
    return (tables.cache_mode(t.features) == "writeback" and t.policy == "smq"
            and t.args == {k: str(v) for k, v in RUNNING_CORE_ARGS.items()})


def _retable(name, mode, policy, core_args=None):
    """The same devices with another mode and policy (a flush needs nothing but the name)."""
    live = dmsetup.table(name)
    if live is None:
        raise NodeError(f"dm device {name} does not exist")
    t = tables.parse(live)
    if t.target != "cache":
        raise NodeError(f"dm device {name} is a {t.target} device, not a cache")
    new = tables.cache(t.length, *t.devices, block_sectors=t.block_sectors, mode=mode,
                       policy=policy, core_args=core_args)
    dmsetup.reload(name, new)


def set_writeback(name):
    _retable(name, "writeback", "smq", core_args=RUNNING_CORE_ARGS)


def predrain(name, timeout, left_bytes=PREDRAIN_LEFT_BYTES):
    """Write most dirty blocks back while the cache stays in write-back (the cleaner policy in
    writeback mode: writes to cached blocks still land locally): until at most `left_bytes`
    are dirty, the count stops falling, or `timeout`. What is left is what flush() writes back
    in writethrough, where the VM's writes wait for the storage node. Returns the seconds."""
    st = read_status(name)
    if st is None or not st.healthy or st.dirty * st.block_sectors * 512 <= left_bytes:
        return 0.0
    start = time.monotonic()
    _retable(name, "writeback", "cleaner",
             core_args={"migration_threshold": FLUSH_MIGRATION_SECTORS})
    best, stalled = st.dirty, 0
    while time.monotonic() - start < timeout and stalled < PREDRAIN_STALLED_POLLS:
        time.sleep(POLL_SECONDS)
        st = read_status(name)
        if not st.healthy or st.dirty * st.block_sectors * 512 <= left_bytes:
            break
        stalled = stalled + 1 if st.dirty >= best else 0
        best = min(best, st.dirty)
    return round(time.monotonic() - start, 3)


def flush(name, timeout, progress=_run.info):
    """Write every dirty block back to the origin; the cache is writethrough + cleaner after.
    Raises NodeError after `timeout` seconds with the blocks still dirty (the cleaner keeps going
    in the background: a re-run continues)."""
    st = read_status(name)
    if st is None:
        raise NodeError(f"write-back cache {name} does not exist")
    if not st.healthy:
        raise NodeError(f"write-back cache {name} reports metadata mode {st.mode}"
                        f"{' (needs_check)' if st.needs_check else ''}; its dirty blocks cannot "
                        "be written back safely: repair its metadata (cache_check/cache_repair) "
                        "first")
    block_bytes = st.block_sectors * 512
    before = st.dirty
    start = time.monotonic()
    if not (st.io_mode == "writethrough" and st.policy == "cleaner"):
        _retable(name, "writethrough", "cleaner",
                 core_args={"migration_threshold": FLUSH_MIGRATION_SECTORS})
    deadline = start + timeout
    last_report = start
    dirty = read_status(name).dirty
    while dirty:
        now = time.monotonic()
        if now > deadline:
            raise NodeError(f"flush of {name} timed out after {timeout}s with {dirty} dirty "
                            f"block(s) ({dirty * block_bytes >> 20} MiB) left; it continues in "
                            "the background, re-run to wait for the rest")
        if now - last_report >= PROGRESS_SECONDS:
            rate = (before - dirty) * block_bytes / max(now - start, 1e-6) / (1 << 20)
            progress(f"flushing {name}: {dirty} dirty block(s) ({dirty * block_bytes >> 20} MiB) "
                     f"left, {rate:.1f} MiB/s")
            last_report = now
        time.sleep(POLL_SECONDS)
        st = read_status(name)
        if not st.healthy:
            raise NodeError(f"write-back cache {name} failed while flushing (metadata mode "
                            f"{st.mode}); {st.dirty} block(s) still dirty")
        dirty = st.dirty
    seconds = time.monotonic() - start
    mib = before * block_bytes / (1 << 20)
    if before:
        progress(f"flushed {name}: {before} block(s) ({mib:.0f} MiB) in {seconds:.1f}s")
    return {"dirty_before_blocks": before, "dirty_after_blocks": 0,
            "seconds": round(seconds, 3), "mib_per_s": round(mib / seconds, 1) if seconds and
            before else 0.0, "block_bytes": block_bytes}


def recover(name, wb, origin, sectors, timeout, progress=_run.info):
    """Boot-time: the cache alone over its origin, flushed and removed again, before anything is
    stacked on it. After an unclean shutdown dm-cache counts every cached block as dirty for as
    long as its metadata stays open (each reload would write them all back again); a device
    removed after the flush leaves metadata that the next assemble opens clean."""
    dev = dmsetup.info(name)
    if dev is not None and dev.open_count:
        raise NodeError(f"{name} is in use; not recovering it")
    if dev is None:
        dmsetup.create(name, table(wb, origin, sectors))
    result = flush(name, timeout, progress)
    dmsetup.remove(name)
    return result


def drop(name):
    """Remove the cache without writing anything back; returns the dirty blocks dropped."""
    st = read_status(name)
    if st is None:
        return 0
    dirty = st.dirty
    dmsetup.remove(name)
    return dirty
