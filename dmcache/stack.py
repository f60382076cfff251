"""A VM disk's device stack on a host, per cache mode, built bottom-up and torn down top-down.

    none            link -> clone LUN
    writeback       link -> tmi-wb-<name>  = dm-cache(writeback, smq) over the clone LUN
    read            link -> tmi-top-<name> = dm-clone(metadata = map LUN, dest = clone LUN,
                                                      source = the image's read cache)
    read+writeback  link -> tmi-top-<name> = dm-clone(metadata = map LUN, dest = tmi-wb-<name>,
                                                      source = the image's read cache)

The top dm-clone never copies in the background (no_hydration): a region the VM writes is copied
from the read cache into the destination first (a local read) and recorded in the map LUN, so the
map says which regions of the clone hold the VM's data and every other region is read from the
image's read cache. The map lives on the storage node next to the clone: any host can assemble
the stack again after a cold move.

The state file is written before the first device is made; assemble completes whatever part of
a stack is missing and keeps what is already right, and refuses a stack that was built for
another mode or over other devices while it is in use.
"""
import os
import stat
from dataclasses import dataclass, field
from typing import Dict, Optional

from tm_iscsi import protocol
from tm_iscsi.node import iscsi, locks, lvm
from tm_iscsi.node import run as _run
from tm_iscsi.node.targets import replace_symlink
from tm_iscsi.node.errors import NodeError

from . import dmsetup, localvg, readcache, state, tables, writeback
from . import status as dmstatus

TOP_PREFIX = "tmi-top-"
DEFAULT_WB_BYTES = 1 << 30
# The longest a flush of one stack may take when the caller's budget does not say less.
FLUSH_TIMEOUT = 7200
REGION_SECTORS = tables.REGION_SECTORS


has_read = protocol.has_read
has_wb = protocol.has_writeback


def top_name(name):
    return TOP_PREFIX + name


def link_target(st):
    if has_read(st.mode):
        return dmsetup.path(top_name(st.name))
    if has_wb(st.mode):
        return dmsetup.path(writeback.dm_name(st.name))
    return st.devices["clone"]


@dataclass
class Request:
    name: str
    mode: str
    clone_dev: str
    base_key: Optional[str] = None
    base_dev: Optional[str] = None
    map_dev: Optional[str] = None
    wb_size_bytes: Optional[int] = None
    link: Optional[str] = None
    luns: Dict[str, state.Lun] = field(default_factory=dict)
    vg: str = localvg.DEFAULT_VG
    wb_epoch: Optional[str] = None
    # prepare() made this new stack's write-back LVs earlier in the same call (active, as
    # lvcreate leaves them): assemble needs no VG report to find them.
    wb_made: bool = False

    @property
    def devices(self):
        read = has_read(self.mode)
        return {"clone": self.clone_dev, "base": self.base_dev if read else None,
                "map": self.map_dev if read else None}


def request_of(st, link=None):
    """The request that built a recorded stack (boot-time activation assembles it again)."""
    return Request(name=st.name, mode=st.mode, clone_dev=st.devices.get("clone"),
                   base_key=st.base_key, base_dev=st.devices.get("base"),
                   map_dev=st.devices.get("map"),
                   wb_size_bytes=st.wb.size_bytes if st.wb else None,
                   link=link if link is not None else st.link, luns=dict(st.luns), vg=st.vg,
                   wb_epoch=st.wb_epoch)


# -- checks ------------------------------------------------------------------------------------

def _block_device(path, role):
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise NodeError(f"--{role}-dev {path} does not exist on this host; attach the LUN first")
    if not stat.S_ISBLK(mode):
        raise NodeError(f"--{role}-dev {path} is not a block device")


def _check_serial(path, role, lun):
    if lun is None:
        return
    kname = readcache.kernel_name(path)
    found = iscsi.unit_serial(kname)
    if found != lun.serial:
        raise NodeError(f"--{role}-dev {path} is /dev/{kname} with unit serial "
                        f"{found or '(none)'}, expected {lun.serial}; refusing to build on it")


def check_request(req):
    """Refuse what cannot be built before anything is changed."""
    if req.mode not in state.MODES:
        raise NodeError(f"unknown cache mode {req.mode!r} (one of {', '.join(state.MODES)})")
    needed = [("clone", req.clone_dev)]
    if has_read(req.mode):
        missing = [opt for opt, val in (("--base-key", req.base_key), ("--base-dev", req.base_dev),
                                        ("--map-dev", req.map_dev)) if not val]
        if missing:
            raise NodeError(f"mode {req.mode} needs {', '.join(missing)}")
        needed += [("base", req.base_dev), ("map", req.map_dev)]
    for role, path in needed:
        _block_device(path, role)
        _check_serial(path, role, req.luns.get(role))
    sizes = {role: readcache.device_bytes(path) for role, path in needed}
    if has_read(req.mode):
        if sizes["base"] < sizes["clone"]:
            raise NodeError(f"the disk ({sizes['clone']} bytes) is larger than its image's base "
                            f"({sizes['base']} bytes): modes that read the image cannot serve "
                            "the part beyond it; use cache mode writeback or none")
        need = tables.clone_metadata_bytes(sizes["clone"], REGION_SECTORS)
        if sizes["map"] < need:
            raise NodeError(f"the map LUN {req.map_dev} has {sizes['map']} bytes; a disk of "
                            f"{sizes['clone']} bytes needs at least {need}")
    return sizes


# -- assemble ----------------------------------------------------------------------------------

def _layer_verdict(name, matches, absent=()):
    """(exists, ok) for a dm device that should be there: a wrong one that nothing has open is
    removed (to be made again); a wrong one in use is refused. `absent`: names seen missing
    under the stack's lock, which nobody else makes."""
    if name in absent:
        return False
    dev = dmsetup.info(name)
    if dev is None:
        return False
    if matches(dmsetup.table(name)):
        return True
    if dev.open_count:
        raise NodeError(f"dm device {name} exists with another layout and is in use; tear the "
                        "stack down first (stack-teardown)")
    _run.info(f"dm device {name} has another layout; making it again")
    dmsetup.remove(name)
    return False


def _wb_size(req, clone_bytes, rep):
    want = req.wb_size_bytes or DEFAULT_WB_BYTES
    # A cache larger than the disk would never fill.
    return max(rep.round_up(1), min(rep.round_up(want), rep.round_up(clone_bytes)))


def _allocate_wb(st, req, clone_bytes):
    """The write-back LVs, shrunk (halving, down to MIN_SIZE_BYTES) when the VG cannot hold the
    size asked even after evicting unused read caches; NoSpaceForWriteback below that. Returns
    the VG report if the LVs were there already, None if this made them (active, as lvcreate
    leaves them)."""
    with locks.lock("localvg", st.vg):
        rep = lvm.local_report(st.vg)
        if st.wb and writeback.lvs_present(st.wb, rep):
            return rep
        wanted = st.wb.size_bytes if st.wb else _wb_size(req, clone_bytes, rep)
        # A half-made pair from an interrupted run goes first.
        if writeback.free(writeback.plan(st.vg, st.name, wanted), rep):
            rep = lvm.local_report(st.vg)
        size = wanted
        floor = min(size, rep.round_up(writeback.MIN_SIZE_BYTES))
        # The report read under this lock serves make_room until something in the VG changed.
        unchanged = rep
        while True:
            wb = writeback.plan(st.vg, st.name, size)
            need = rep.round_up(size) + rep.round_up(writeback.meta_bytes(wb))
            try:
                rep = readcache.make_room(st.vg, need, rep=unchanged)
                break
            except readcache.NoSpace as err:
                unchanged = None   # it may have evicted some before giving up
                if size <= floor:
                    raise NoSpaceForWriteback(f"no room for the write-back cache of {st.name} "
                                              f"(at least {floor >> 20} MiB): {err}")
                size = max(floor, rep.round_up(size // 2))
        if size < wanted:
            st.degraded = f"write-back cache shrunk to {size >> 20} MiB for lack of room"
            _run.info(st.degraded)
        st.wb = wb
        state.save_stack(st)
        writeback.allocate(wb, st.name)
        return None


class NoSpaceForWriteback(NodeError):
    pass


def _activate_lvs(vg, names, rep):
    for lv_name in names:
        lv = rep.get(lv_name)
        if lv is not None and not lv.active:
            lvm.activate(vg, lv_name)


def assemble(req):
    sizes = check_request(req)
    clone_bytes = sizes["clone"]
    sectors = clone_bytes // 512
    top = top_name(req.name)
    wbn = writeback.dm_name(req.name)
    with locks.lock("stack", req.name):
        st = state.load_stack(req.name)
        if st is not None and st.mode != req.mode:
            raise NodeError(f"stack {req.name} exists in mode {st.mode}, not {req.mode}; tear it "
                            f"down first (stack-teardown --name {req.name} --flush)")
        top_dev, wb_dev = dmsetup.info(top), dmsetup.info(wbn)
        if st is None:
            stray = [n for n, d in ((top, top_dev), (wbn, wb_dev)) if d is not None and (
                (n == top and not has_read(req.mode)) or (n == wbn and not has_wb(req.mode)))]
            if stray:
                raise NodeError(f"dm device(s) {', '.join(stray)} exist without a recorded stack "
                                f"and do not belong to mode {req.mode}; remove them first "
                                f"(stack-teardown --name {req.name} --flush)")
        old_cache = None
        if st is not None and (st.devices != req.devices or st.base_key != (
                req.base_key if has_read(req.mode) else None) or st.vg != req.vg):
            if top_dev is not None or wb_dev is not None:
                raise NodeError(f"stack {req.name} is assembled over other devices or another "
                                "base; tear it down first (stack-teardown --flush)")
            old_cache = st.read_cache
            st = None
        kept = True
        # Nothing of it existed before this call: a failure takes away what the call made.
        fresh = (st is None or req.wb_made) and top_dev is None and wb_dev is None
        if st is None:
            kept = False
            st = _new_state(req)
        else:
            st.link = req.link or st.link
            st.luns = {k: v for k, v in req.luns.items() if req.devices.get(k)} or st.luns
        if has_wb(req.mode) and st.wb_epoch != req.wb_epoch:
            _drop_void_writeback(st, top, wbn)
            st.wb_epoch = req.wb_epoch
            kept = False
        st.phase = "assembling" if st.phase != "assembled" else st.phase
        # Recorded before any device exists: counted as a user of its read cache from now on.
        state.save_stack(st)
        if old_cache and old_cache != st.read_cache:
            readcache.release(req.vg, old_cache)
        try:
            # What was missing at the start still is (only this stack's lock holder makes it):
            # no dmsetup call needs to look again.
            absent = {n for n, dev in ((top, top_dev), (wbn, wb_dev)) if dev is None}
            layers, kept = _build(req, st, sectors, clone_bytes, kept, absent)
        except NodeError:
            if fresh:
                _rollback(req)
            raise
    return {"name": req.name, "mode": req.mode, "top": link_target(st), "layers": layers,
            "kept": kept, "degraded": st.degraded, "link": st.link}


def _new_state(req):
    return state.StackState(
        name=req.name, mode=req.mode, devices=req.devices, vg=req.vg,
        luns={k: v for k, v in req.luns.items() if req.devices.get(k)}, link=req.link,
        base_key=req.base_key if has_read(req.mode) else None,
        read_cache=readcache.cache_id(req.base_key) if has_read(req.mode) else None,
        wb_epoch=req.wb_epoch)


def prepare(req, clone_bytes):
    """The first step of assemble(req) for a new write-back stack, taken before its LUNs are
    there: its state recorded and its write-back LVs made (host-attach logs in to the LUNs
    meanwhile; the LVs are a third of a cached deploy on the host). `req.devices` are the paths
    the LUNs will have; assemble(req) then finds the LVs, or, if the devices came otherwise,
    makes them again. True if it did that; False, with nothing done, for any stack that is not
    new (assemble decides for it as before)."""
    if not has_wb(req.mode):
        return False
    with locks.lock("stack", req.name):
        if state.load_stack(req.name) is not None or dmsetup.exists(top_name(req.name)) or \
                dmsetup.exists(writeback.dm_name(req.name)):
            return False
        st = _new_state(req)
        # The state a kill inside assemble can leave too: re-run, teardown and boot know it.
        state.save_stack(st)
        try:
            _allocate_wb(st, req, clone_bytes)
        except NodeError:
            _rollback(req)
            raise
    return True


def discard(req):
    """Take back what prepare(req) made, when the call fails before assemble(req) ran."""
    with locks.lock("stack", req.name):
        _rollback(req)


def _drop_void_writeback(st, top, wbn):
    """The disk was given its last checkpoint's content after this host was declared lost
    (host-lost): what this host's write-back cache holds of it belongs to the content that was
    replaced, and is dropped, never written back."""
    for name in (top, wbn):
        dev = dmsetup.info(name)
        if dev is not None and dev.open_count and not (name == wbn and dmsetup.exists(top)):
            raise NodeError(f"{name} is in use, but its disk was recovered elsewhere after this "
                            "host was declared lost; stop what uses it, then run the action "
                            "again")
    _run.info(f"{st.name}: dropping this host's write-back cache of it (written before the "
              "host was declared lost; the disk was put back to its checkpoint since)")
    for name in (top, wbn):
        if dmsetup.exists(name):
            dmsetup.remove(name)
    if st.wb is not None:
        writeback.free(st.wb)
        st.wb = None
    state.save_stack(st)


def _rollback(req):
    """Undo a new stack that could not be built (no dirty data can exist in it yet)."""
    try:
        _, cache, cache_vg = _teardown(req.name, False, 60, req.vg)
        if cache:
            readcache.release(cache_vg, cache)
    except NodeError as err:
        _run.info(f"could not undo the partial stack {req.name}: {err}; stack-teardown "
                  "removes it")


def _build(req, st, sectors, clone_bytes, kept, absent=()):
    """The layers bottom-up (with the stack's lock held); returns (layers, kept)."""
    top = top_name(req.name)
    wbn = writeback.dm_name(req.name)
    layers = {}
    source = None
    if has_read(req.mode):
        existing = None if top in absent else dmsetup.table(top)
        if existing is not None and st.read_cache is None:
            # Built over the base itself (no room for a read cache then): keep it so.
            source = req.base_dev
            layers["read_cache"] = None
        else:
            try:
                rc = readcache.acquire(req.vg, req.base_key, req.base_dev,
                                       (req.luns.get("base") or st.luns.get("base")
                                        or state.Lun("", "", "")).serial or None)
                source = rc["device"]
                layers["read_cache"] = rc
                if st.read_cache is None:
                    st.read_cache = readcache.cache_id(req.base_key)
                    st.degraded = None
                kept = kept and not rc["created"] and not rc["device_created"]
            except readcache.NoSpace as err:
                # Correct without a read cache, only slower: read the base directly.
                st.read_cache = None
                st.degraded = f"no read cache ({err}); reading the base directly"
                _run.info(st.degraded)
                if not readcache.is_readonly(req.base_dev):
                    readcache.set_readonly(req.base_dev)
                source = req.base_dev
                layers["read_cache"] = None
            state.save_stack(st)

    dest = req.clone_dev
    if has_wb(req.mode):
        if req.wb_made and st.wb is not None:
            rep = None   # made by prepare() in this call
        else:
            rep = lvm.local_report(req.vg) if st.wb is not None else None
            if st.wb is None or not writeback.lvs_present(st.wb, rep):
                kept = False
                rep = _allocate_wb(st, req, clone_bytes)
        if rep is not None:
            _activate_lvs(req.vg, (st.wb.data_lv, st.wb.meta_lv), rep)
        ok = _layer_verdict(wbn, lambda t: writeback.matches(t, st.wb, req.clone_dev,
                                                              sectors), absent)
        if ok:
            if not writeback.is_writeback(dmsetup.table(wbn)):
                # Left clean by a flush (or by boot-time activation): running again.
                _run.info(f"{wbn} is writethrough after a flush; back to writeback")
                writeback.set_writeback(wbn)
                st.checkpoint = None
        else:
            kept = False
            dmsetup.create(wbn, writeback.table(st.wb, req.clone_dev, sectors))
        dest = dmsetup.path(wbn)
        layers["writeback"] = {"device": dest, "size_bytes": st.wb.size_bytes,
                               "data_lv": st.wb.data_lv, "meta_lv": st.wb.meta_lv}

    if has_read(req.mode):
        want = tables.clone(sectors, req.map_dev, dest, source, REGION_SECTORS,
                            features=["no_hydration"])

        def top_matches(live):
            try:
                t = tables.parse(live)
                devs = tuple(tables.devno(p) for p in (req.map_dev, dest, source))
            except (ValueError, OSError):
                return False
            return (t.target == "clone" and t.devices == devs and t.length == sectors
                    and t.block_sectors == REGION_SECTORS)

        if not _layer_verdict(top, top_matches, absent):
            kept = False
            dmsetup.create(top, want)
        layers["top"] = {"device": dmsetup.path(top), "map": req.map_dev,
                         "source": source, "dest": dest}

    if req.link:
        replace_symlink(req.link, link_target(st))
    st.phase = "assembled"
    state.save_stack(st)
    return layers, kept


# -- flush / teardown --------------------------------------------------------------------------

def flush(name, timeout):
    with locks.lock("stack", name):
        st = state.load_stack(name)
        wbn = writeback.dm_name(name)
        if st is None and not dmsetup.exists(wbn):
            raise NodeError(f"no stack named {name} on this host")
        if st is not None and st.checkpoint:
            # Kept clean for whoever flushes now: a checkpoint's end no longer turns it back.
            st.checkpoint = None
            state.save_stack(st)
        if dmsetup.exists(wbn):
            result = writeback.flush(wbn, timeout)
        else:
            result = {"dirty_before_blocks": 0, "dirty_after_blocks": 0, "seconds": 0.0,
                      "mib_per_s": 0.0}
    return dict(result, name=name)


def resume_writeback(name):
    """Back to write-back after a flush left the stack clean (a live snapshot is taken in
    between). A stack without a write-back layer has nothing to resume."""
    with locks.lock("stack", name):
        wbn = writeback.dm_name(name)
        if not dmsetup.exists(wbn):
            if state.load_stack(name) is None:
                raise NodeError(f"no stack named {name} on this host")
            return {"name": name, "writeback": False}
        if not writeback.is_writeback(dmsetup.table(wbn)):
            writeback.set_writeback(wbn)
        st = state.load_stack(name)
        if st is not None and st.checkpoint:
            st.checkpoint = None
            state.save_stack(st)
        return {"name": name, "writeback": True}


def _remove_link(st):
    if not st or not st.link:
        return False
    link = st.link
    if not os.path.islink(link):
        return False
    target = os.readlink(link)
    ours = {link_target(st), dmsetup.path(top_name(st.name)),
            dmsetup.path(writeback.dm_name(st.name))}
    if target in ours:
        os.unlink(link)
        return True
    _run.info(f"{link} points to {target}, not to stack {st.name}; left in place")
    return False


def teardown(name, do_flush, timeout, vg=localvg.DEFAULT_VG):
    with locks.lock("stack", name):
        result, cache, cache_vg = _teardown(name, do_flush, timeout, vg)
    key = result["read_cache_key"]
    if key:
        left = readcache.release(cache_vg, cache) if cache else 0
        # True when nothing on this host reads the image's base any more (the front-end may
        # detach it): neither its read cache nor a stack built over the base directly.
        result["read_cache_released"] = left == 0 and not any(
            st.base_key == key for st in state.list_stacks())
    return result


def _teardown(name, do_flush, timeout, vg):
    """With the stack's lock held. Returns (result, read cache id to release, its VG)."""
    st = state.load_stack(name)
    top, wbn = top_name(name), writeback.dm_name(name)
    top_dev = dmsetup.settled_info(top)
    # Under a top the write-back device is held open by the top itself: settling it would wait
    # out udev's whole grace for a count that only the top's removal drops. Without a top, its
    # count is its users'.
    wb_dev = dmsetup.info(wbn) if top_dev is not None else dmsetup.settled_info(wbn)
    result = {"name": name, "flushed": False, "dropped_dirty_blocks": 0,
              "read_cache_key": st.base_key if st else None, "read_cache_released": False,
              "existed": bool(st or top_dev or wb_dev)}
    if not result["existed"]:
        return result, None, vg
    users = top_dev if top_dev is not None else wb_dev
    if users is not None and users.open_count:
        raise NodeError(f"stack {name} is in use ({users.name} open {users.open_count} "
                        "time(s)); stop the VM first")
    if wb_dev is not None:
        if do_flush:
            result["flush"] = writeback.flush(wbn, timeout)
        else:
            st_wb = writeback.read_status(wbn)
            result["dropped_dirty_blocks"] = st_wb.dirty if st_wb else 0
            if result["dropped_dirty_blocks"]:
                _run.info(f"dropping {result['dropped_dirty_blocks']} dirty block(s) of "
                          f"{name} as asked")
    result["flushed"] = bool(do_flush)
    result["link_removed"] = _remove_link(st)
    # dm-clone commits the map's metadata as it goes away.
    dmsetup.remove(top)
    dmsetup.remove(wbn)
    wb = st.wb if st and st.wb else writeback.plan(st.vg if st else vg, name, 0)
    writeback.free(wb)
    state.delete_stack(name)
    return result, (st.read_cache if st else None), (st.vg if st else vg)


# -- status ------------------------------------------------------------------------------------

def describe(st):
    out = {"name": st.name, "mode": st.mode, "phase": st.phase, "degraded": st.degraded,
           "base_key": st.base_key, "dirty_blocks": None, "read_hits": None,
           "read_misses": None, "write_hits": None, "write_misses": None,
           "written_regions": None, "wb_epoch": st.wb_epoch}
    wb = writeback.read_status(writeback.dm_name(st.name)) if has_wb(st.mode) else None
    if wb is not None:
        out.update(dirty_blocks=wb.dirty, dirty_bytes=wb.dirty * wb.block_sectors * 512,
                   read_hits=wb.read_hits, read_misses=wb.read_misses,
                   write_hits=wb.write_hits, write_misses=wb.write_misses,
                   writeback=wb.as_dict())
    if has_read(st.mode):
        text = dmsetup.status(top_name(st.name))
        if text is not None:
            top = dmstatus.of(top_name(st.name), text)
            out["written_regions"] = top.hydrated
            out["regions"] = top.regions
            out["map_metadata_mode"] = top.mode
    return out
