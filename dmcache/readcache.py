"""The shared read cache of an image on a host: a local replica of the regions VMs read.

Mechanism (chosen on the numbers in bench/results/cache-mechanism.md): dm-clone with
source = the image's base LUN, destination = a local LV, metadata = a small local LV, and no
background hydration. Reads of a region not yet copied go to the base; a dm-stats region over the
device counts which areas VMs read, and a warm-up copies exactly those areas into the local LV
(read, then the same bytes written back as whole regions, which dm-clone marks hydrated without
reading the source again). The warm-up runs when another stack of the same image is assembled
(before its VM starts) and when the last stack using the cache lets go of it. So the second VM of
an image reads what the first one read from local disk, at a network cost of twice what the first
VM read, never the whole image: dm-cache's smq promotes too late (second miss, and only while the
origin is idle) and a full background hydration copies regions no VM ever reads.

The base is never written: dm-clone opens its source read-only, and the base's SCSI disk is set
read-only (BLKROSET) before the cache is built on it, so not even a stray write on the host can
reach it.

One cache per base key (the front-end's name for one version of an image's base): the key is
hashed into the cache id that names the LVs and the dm device. A new key for the same base LUN
(same unit serial) makes the old cache stale: it is discarded as soon as no stack uses it.
Caches stay after their last stack goes (LVs kept, dm device removed so the base LUN can be
detached) and are evicted least recently used first when the local VG needs room.
"""
import hashlib
import mmap
import os
import time

from tm_iscsi.node import iscsi, locks, lvm
from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError

from . import dmsetup, localvg, state, tables
from . import status as dmstatus

DM_PREFIX = "tmi-"
STATS_PROGRAM = "tm_iscsi-warm"
REGION_SECTORS = tables.REGION_SECTORS
# dm-stats answers with one line per area; past this many areas get coarser (a warm-up then
# copies a little around what was read) so the answer stays a few MB for huge images.
MAX_AREAS = 65536
COPY_BYTES = 1 << 20
# A warm-up runs inside a front-end action (deploy, terminate): bounded, and what is left is
# done by the next one (the areas stay marked).
WARM_SECONDS = float(os.environ.get("TM_ISCSI_WARM_SECONDS", "120"))
BITMAP_SAVE_BYTES = 64 << 20
# Direct I/O: the copy must neither come from nor stay in the host's page cache.
OPEN_FLAGS = os.O_RDWR | os.O_DIRECT


class NoSpace(NodeError):
    """The local VG cannot hold what was asked, even after evicting every unused read cache."""


def cache_id(key):
    return "rc-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def dm_name(cid):
    return DM_PREFIX + cid


def lv_names(cid):
    return f"{cid}-data", f"{cid}-meta"


def device_bytes(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def kernel_name(path):
    return os.path.basename(os.path.realpath(path))


def set_readonly(dev):
    """The base's disk refuses writes from anything on this host from now on."""
    _run.run(["blockdev", "--setro", dev], timeout=30, what=f"making {dev} read-only")


def is_readonly(dev):
    try:
        with open(f"/sys/class/block/{kernel_name(dev)}/ro") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def area_sectors(size_bytes, region_sectors=REGION_SECTORS):
    area = region_sectors
    while -(-size_bytes // (area * 512)) > MAX_AREAS:
        area *= 2
    return area


# -- space -----------------------------------------------------------------------------------

def _cache_lvs(rep):
    """cache id -> bytes of its LVs, from the LV tags (finds orphans without a record too)."""
    sizes = {}
    for lv in rep.lvs.values():
        if localvg.tag_value(lv, "kind") == "readcache":
            cid = localvg.tag_value(lv, "rc")
            if cid:
                sizes[cid] = sizes.get(cid, 0) + lv.size_bytes
    return sizes


def make_room(vg, need_bytes, keep=(), rep=None):
    """With the VG lock held: evict unused read caches, least recently used first, until
    need_bytes are free. Returns the VG report; raises NoSpace when it cannot be done (and then
    evicts nothing). `rep`: the VG as the caller read it under that lock, if it changed nothing
    since (each report is a full `vgs` of the VG)."""
    rep = rep or lvm.local_report(vg)
    free = rep.free_bytes or 0
    if need_bytes <= free:
        return rep
    stacks = state.list_stacks()
    records = {r.id: r for r in state.list_records()}
    candidates = [localvg.Candidate(cid, size, records[cid].last_used if cid in records else 0.0)
                  for cid, size in _cache_lvs(rep).items()
                  if cid not in keep and state.refs(cid, stacks) == 0]
    plan = localvg.plan_eviction(candidates, need_bytes, free)
    if plan is None:
        raise NoSpace(f"the local cache VG {vg} has {free >> 20} MiB free and "
                      f"{sum(c.size_bytes for c in candidates) >> 20} MiB in unused read caches; "
                      f"{-(-need_bytes // (1 << 20))} MiB are needed")
    for cid in plan:
        try:
            with locks.lock("readcache", cid, timeout=1):
                _run.info(f"evicting read cache {cid} (least recently used) from {vg}")
                evict(vg, cid, rep)
        except NodeError as err:
            # In use by a concurrent action since the plan was made: it is not unused any more.
            _run.info(f"not evicting read cache {cid}: {err}")
    rep = lvm.local_report(vg)
    if (rep.free_bytes or 0) < need_bytes:
        raise NoSpace(f"the local cache VG {vg} has {(rep.free_bytes or 0) >> 20} MiB free "
                      f"after eviction; {-(-need_bytes // (1 << 20))} MiB are needed")
    return rep


def evict(vg, cid, rep=None):
    """Remove an unused read cache entirely (device, metadata LV, data LV, record). Call with
    the cache's lock held."""
    if state.refs(cid):
        raise NodeError(f"read cache {cid} is used by a stack")
    dmsetup.remove(dm_name(cid))
    rep = rep or lvm.local_report(vg)
    data_lv, meta_lv = lv_names(cid)
    # Metadata first: data without metadata is harmless (a new metadata LV says "nothing
    # copied"), metadata without its data would claim regions that are not there.
    localvg.release(vg, meta_lv, rep)
    localvg.release(vg, data_lv, rep)
    state.delete_record(cid)


# -- acquire / release -----------------------------------------------------------------------

def _lvs_match(rec, rep):
    data_lv, meta_lv = lv_names(rec.id)
    data, meta = rep.get(data_lv), rep.get(meta_lv)
    return (data is not None and meta is not None and data.uuid == rec.data_uuid
            and meta.uuid == rec.meta_uuid and data.size_bytes >= rec.size_bytes)


def _discard_superseded(vg, cid, base_serial):
    """Caches of the same base LUN under another key hold an older base: drop the unused ones."""
    if not base_serial:
        return
    for rec in state.list_records():
        if rec.id == cid or rec.base_serial != base_serial:
            continue
        try:
            with locks.lock("readcache", rec.id, timeout=1):
                if state.refs(rec.id) == 0:
                    _run.info(f"discarding read cache {rec.id}: its base key changed")
                    evict(vg, rec.id)
        except NodeError as err:
            _run.info(f"not discarding read cache {rec.id} yet: {err}")


def _table(rec, base_dev):
    data_lv, meta_lv = lv_names(rec.id)
    return tables.clone(rec.size_bytes // 512, lvm.lv_path(rec.vg, meta_lv),
                        lvm.lv_path(rec.vg, data_lv), base_dev, rec.region_sectors,
                        features=["no_hydration"])


def _table_matches(live, rec, base_dev):
    data_lv, meta_lv = lv_names(rec.id)
    try:
        t = tables.parse(live)
        want = (tables.devno(lvm.lv_path(rec.vg, meta_lv)),
                tables.devno(lvm.lv_path(rec.vg, data_lv)), tables.devno(base_dev))
    except (ValueError, OSError):
        return False
    return (t.target == "clone" and t.devices == want and t.length == rec.size_bytes // 512
            and t.block_sectors == rec.region_sectors)


def _new_record(vg, cid, key, base_bytes, base_serial):
    """The cache's two LVs made (room made first) and recorded; returns (the record, the VG
    report read after making them)."""
    data_lv, meta_lv = lv_names(cid)
    meta_bytes = tables.clone_metadata_bytes(base_bytes, REGION_SECTORS)
    with locks.lock("localvg", vg):
        rep = lvm.local_report(vg)
        released = localvg.release(vg, meta_lv, rep)
        released = localvg.release(vg, data_lv, rep) or released
        state.delete_record(cid)
        rep = make_room(vg, rep.round_up(base_bytes) + rep.round_up(meta_bytes), keep={cid},
                        rep=None if released else rep)
        lv_tags = localvg.tags("readcache", rc=cid)
        localvg.allocate(vg, data_lv, base_bytes, lv_tags)
        localvg.allocate(vg, meta_lv, meta_bytes, lv_tags)
        rep = lvm.local_report(vg)
    now = time.time()
    rec = state.ReadCacheRecord(
        id=cid, key=key, vg=vg, data_lv=data_lv, meta_lv=meta_lv,
        data_uuid=rep.get(data_lv).uuid, meta_uuid=rep.get(meta_lv).uuid, size_bytes=base_bytes,
        region_sectors=REGION_SECTORS, base_serial=base_serial, created=now, last_used=now)
    state.save_record(rec)
    return rec, rep


def acquire(vg, key, base_dev, base_serial=None, warm_seconds=None):
    """The read cache device of `key` over `base_dev`, made or reused, warmed with what other
    VMs read so far. Raises NoSpace when the VG cannot hold a replica of the base."""
    cid = cache_id(key)
    name = dm_name(cid)
    base_bytes = device_bytes(base_dev)
    base_serial = base_serial or iscsi.unit_serial(kernel_name(base_dev))
    with locks.lock("readcache", cid):
        _discard_superseded(vg, cid, base_serial)
        rec = state.load_record(cid)
        if rec is not None and rec.key != key:
            raise NodeError(f"read cache {cid} belongs to base key {rec.key!r}, not {key!r}")
        if rec is not None and rec.size_bytes != base_bytes:
            raise NodeError(f"the read cache of base key {key!r} holds a base of "
                            f"{rec.size_bytes} bytes, but {base_dev} has {base_bytes}: a changed "
                            "base needs a new --base-key")
        dev = dmsetup.info(name)
        created = False
        if dev is not None and rec is not None and \
                _table_matches(dmsetup.table(name), rec, base_dev):
            # Live over the recorded LVs (their paths' devices are in its table) and the base:
            # the LVs are there, active and the recorded ones, since a device that holds them
            # open keeps them from being removed or replaced. No VG report needed.
            return _serve(name, rec, created, dev, warm_seconds)
        rep = lvm.local_report(vg)
        if rec is None or not _lvs_match(rec, rep):
            if dev is not None:
                # Its LVs are not the ones recorded: nothing must read through it.
                dmsetup.remove(name)
                dev = None
            _run.info(f"making the read cache of {key!r} ({base_bytes >> 20} MiB) in {vg}")
            rec, rep = _new_record(vg, cid, key, base_bytes, base_serial)
            created = True
        for lv_name in lv_names(cid):
            if not rep.get(lv_name).active:
                lvm.activate(vg, lv_name)
        if dev is not None and not _table_matches(dmsetup.table(name), rec, base_dev):
            # Built over another device (the base was re-attached): rebuild, if nothing reads it.
            dmsetup.remove(name)
            dev = None
        if dev is None:
            if not is_readonly(base_dev):
                set_readonly(base_dev)
            dmsetup.create(name, _table(rec, base_dev))
        return _serve(name, rec, created, dev, warm_seconds)


def _serve(name, rec, created, dev, warm_seconds):
    """The device up (with the read cache's lock held): warmed if it was up already, counting
    reads, its use recorded."""
    warmed = None
    if dev is not None:
        warmed = warm(rec, WARM_SECONDS if warm_seconds is None else warm_seconds)
    # Also for a device an interrupted run made: reads are only learnt while this exists.
    if not dmsetup.stats_regions(name, STATS_PROGRAM):
        dmsetup.stats_create(name, area_sectors(rec.size_bytes, rec.region_sectors),
                             STATS_PROGRAM)
    rec.last_used = time.time()
    state.save_record(rec)
    return {"id": rec.id, "key": rec.key, "device": dmsetup.path(name), "created": created,
            "device_created": warmed is None, "warmed": warmed}


def release(vg, cid, warm_seconds=None):
    """After a stack stopped using the cache: when none uses it any more, copy in what was read,
    remove the device (which lets the base LUN go) and keep the LVs. Returns the stacks left."""
    with locks.lock("readcache", cid):
        left = state.refs(cid)
        rec = state.load_record(cid)
        if left or rec is None:
            return left
        name = dm_name(cid)
        if dmsetup.exists(name):
            try:
                warm(rec, WARM_SECONDS if warm_seconds is None else warm_seconds)
            except (NodeError, OSError) as err:
                # Only an optimisation: the areas are read again by the next VM.
                _run.info(f"warm-up of read cache {cid} skipped: {err}")
            dmsetup.remove(name)
        rec.last_used = time.time()
        state.save_record(rec)
        newer = [r for r in state.list_records() if r.id != cid and rec.base_serial
                 and r.base_serial == rec.base_serial and r.created > rec.created]
        if newer:
            _run.info(f"discarding read cache {cid}: a newer base key replaced it")
            evict(vg, cid)
    return 0


def release_idle(key_prefix):
    """Every read cache of a base key starting with `key_prefix` that no stack uses, released
    without a warm-up: a teardown killed between removing its stack and releasing the cache left
    the cache's device holding the base LUN, and no stack is left to release it. Returns the ids
    released."""
    released = []
    for rec in state.list_records():
        if rec.key.startswith(key_prefix) and dmsetup.exists(dm_name(rec.id)):
            if release(rec.vg, rec.id, warm_seconds=0) == 0:
                released.append(rec.id)
    return released


# -- warm-up ---------------------------------------------------------------------------------

def _stats_region(name):
    ids = dmsetup.stats_regions(name, STATS_PROGRAM)
    return ids[0] if ids else None


def _bit(bits, region):
    return bits[region >> 3] & (1 << (region & 7))


def _set(bits, region):
    bits[region >> 3] |= 1 << (region & 7)


def mark_read(areas, bits, pending, region_sectors, nregions):
    """Set in `pending` the regions of the areas VMs read that are not copied yet."""
    for area in areas:
        if area.reads <= 0:
            continue
        first = area.start // region_sectors
        last = min(nregions, -(-(area.start + area.length) // region_sectors))
        for region in range(first, last):
            if not _bit(bits, region):
                _set(pending, region)
    return pending


def set_regions(bits, nregions):
    return [r for r in range(nregions) if _bit(bits, r)]


def runs(regions, region_bytes, size_bytes, max_bytes=COPY_BYTES):
    """Consecutive regions joined into (offset, length) copies of at most max_bytes."""
    per = max(1, max_bytes // region_bytes)
    out = []
    start = prev = None
    count = 0
    for region in regions:
        if start is not None and region == prev + 1 and count < per:
            prev, count = region, count + 1
            continue
        if start is not None:
            out.append((start, prev))
        start = prev = region
        count = 1
    if start is not None:
        out.append((start, prev))
    return [(first * region_bytes,
             min(size_bytes, (last + 1) * region_bytes) - first * region_bytes)
            for first, last in out]


def warm(rec, budget_seconds):
    """Copy the regions VMs read into the local LV; returns what was done.

    The read areas are taken from dm-stats and cleared in one step (so no read is missed while
    copying) into the "pending" bitmap, which outlives a warm-up cut short by its budget or a
    crash; the "bitmap" of copied regions only ever claims what dm-clone has committed."""
    name = dm_name(rec.id)
    region_bytes = rec.region_sectors * 512
    nregions = tables.regions(rec.size_bytes, rec.region_sectors)
    region_id = _stats_region(name)
    bits = state.load_bitmap(rec.id, nregions)
    pending = state.load_bitmap(rec.id, nregions, "pending")
    if region_id is not None:
        areas = dmsetup.stats_print(name, region_id, clear=True)
        # Clearing the areas restarts the hit counters: what they held is kept as a total.
        state.add_counters(rec.id, *_hits_and_misses(areas, bits, rec.region_sectors, nregions))
        mark_read(areas, bits, pending, rec.region_sectors, nregions)
        state.save_bitmap(rec.id, pending, "pending")
    start = time.monotonic()
    deadline = start + budget_seconds
    copied = done_bytes = unsaved = 0
    complete = True
    todo = set_regions(pending, nregions)
    if todo:
        fd = os.open(dmsetup.path(name), OPEN_FLAGS)
        buf = mmap.mmap(-1, COPY_BYTES)
        try:
            for offset, length in runs(todo, region_bytes, rec.size_bytes):
                if time.monotonic() > deadline:
                    complete = False
                    break
                view = memoryview(buf)[:length]
                try:
                    if os.preadv(fd, [view], offset) != length or \
                            os.pwritev(fd, [view], offset) != length:
                        raise NodeError(f"short read or write at byte {offset} of {name}")
                finally:
                    view.release()
                for region in range(offset // region_bytes,
                                    -(-(offset + length) // region_bytes)):
                    _set(bits, region)
                    pending[region >> 3] &= ~(1 << (region & 7)) & 0xFF
                    copied += 1
                done_bytes += length
                unsaved += length
                if unsaved >= BITMAP_SAVE_BYTES:
                    # The bitmap may only claim what dm-clone has committed: flush first.
                    os.fsync(fd)
                    state.save_bitmap(rec.id, bits)
                    state.save_bitmap(rec.id, pending, "pending")
                    unsaved = 0
            os.fsync(fd)
        finally:
            buf.close()
            os.close(fd)
        state.save_bitmap(rec.id, bits)
        state.save_bitmap(rec.id, pending, "pending")
    seconds = time.monotonic() - start
    if copied:
        _run.info(f"read cache {rec.id}: copied {copied} region(s) ({done_bytes >> 20} MiB) that "
                  f"VMs read, in {seconds:.1f}s" + ("" if complete else "; the rest next time"))
    return {"regions": copied, "bytes": done_bytes, "seconds": round(seconds, 3),
            "complete": complete}


# Slices of the periodic warm-up: the cache's lock is let go between two, so a deploy that
# assembles a stack of the same image waits for one slice at most, not the whole budget.
SLICE_SECONDS = 5.0


def warm_active(vg, budget_seconds, slice_seconds=SLICE_SECONDS):
    """The periodic warm-up (a host timer): copy what VMs read into every read cache that has a
    device, i.e. that running VMs use. Without it, VMs of one image deployed in a burst before
    any of them read find nothing local until the next deploy or the last one's end.
    Each cache gets an equal share of what is left of the budget (a cache that finishes early
    hands the rest on), so one large image cannot starve the others run after run."""
    deadline = time.monotonic() + budget_seconds
    records = [r for r in state.list_records() if r.vg == vg]
    results = []
    for index, rec in enumerate(records):
        share_end = time.monotonic() + max(0.0, deadline - time.monotonic()) / \
            (len(records) - index)
        done = {"id": rec.id, "key": rec.key, "regions": 0, "bytes": 0, "seconds": 0.0,
                "complete": True}
        while True:
            left = share_end - time.monotonic()
            with locks.lock("readcache", rec.id):
                current = state.load_record(rec.id)
                # Gone, replaced or without a device since the listing: no VM reads it.
                if current is None or current.key != rec.key or \
                        not dmsetup.exists(dm_name(rec.id)):
                    done["active"] = False
                    break
                done["active"] = True
                # Also with no time left: taking what was read into the pending bitmap keeps
                # it for the next run.
                try:
                    step = warm(current, max(0.0, min(slice_seconds, left)))
                except (NodeError, OSError) as err:
                    # One unreadable base (its LUN gone) must not keep the others cold.
                    done["error"] = str(err)
                    done["complete"] = False
                    break
            for field in ("regions", "bytes", "seconds"):
                done[field] += step[field]
            done["complete"] = step["complete"]
            if step["complete"] or left <= 0:
                break
        done["seconds"] = round(done["seconds"], 3)
        results.append(done)
    return results


# -- status ----------------------------------------------------------------------------------

def popcount(bits):
    return sum(bin(b).count("1") for b in bits)


def describe(rec, stacks):
    """What cache-status reports about one read cache."""
    name = dm_name(rec.id)
    nregions = tables.regions(rec.size_bytes, rec.region_sectors)
    bits = state.load_bitmap(rec.id, nregions)
    out = {"key": rec.key, "id": rec.id, "size_bytes": rec.size_bytes,
           "refs": state.refs(rec.id, stacks), "last_used": rec.last_used, "active": False,
           "regions": nregions, "hydrated_regions": popcount(bits),
           "read_hits": None, "read_misses": None}
    text = dmsetup.status(name)
    if text is None:
        return out
    st = dmstatus.of(name, text)
    out["active"] = True
    out["hydrated_regions"] = st.hydrated
    out["metadata_mode"] = st.mode
    region_id = _stats_region(name)
    total = state.load_counters(rec.id)
    out["read_hits_total"], out["read_misses_total"] = total["hits"], total["misses"]
    if region_id is not None:
        # Reads since the last warm-up, split by whether their area was local: dm-clone itself
        # counts no hits or misses.
        hits, misses = _hits_and_misses(dmsetup.stats_print(name, region_id), bits,
                                        rec.region_sectors, nregions)
        out["read_hits"], out["read_misses"] = hits, misses
        out["read_hits_total"] += hits
        out["read_misses_total"] += misses
    return out


def _hits_and_misses(areas, bits, region_sectors, nregions):
    """Read requests of dm-stats areas, split by whether their regions were local."""
    hits = misses = 0
    for area in areas:
        if not area.reads:
            continue
        first = area.start // region_sectors
        last = min(nregions, -(-(area.start + area.length) // region_sectors))
        if all(_bit(bits, r) for r in range(first, last)):
            hits += area.reads
        else:
            misses += area.reads
    return hits, misses
