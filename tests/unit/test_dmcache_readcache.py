"""Read-cache decisions with LVM and dmsetup replaced by fakes: least-recently-used eviction,
reference counts from the stack files, a changed base key, the warm-up's region bookkeeping and
its copy (on a plain file standing in for the dm device)."""
import os

import pytest

from dmcache import dmsetup, localvg, readcache, state
from tm_iscsi.node import locks, lvm
from tm_iscsi.node.errors import NodeError

MIB = 1 << 20
VG = "tmi-cache"


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path / "locks"))


class FakeVG:
    """The local VG: LVs made and removed through the localvg/lvm calls the code makes."""

    def __init__(self, size=1024 * MIB):
        self.size = size
        self.lvs = {}
        self.made = []
        self.removed = []
        self.next_uuid = 0

    def report(self, vg, missing_ok=False):
        used = sum(lv.size_bytes for lv in self.lvs.values())
        return lvm.VGReport(vg, self.size, self.size - used, 4 * MIB, dict(self.lvs))

    def allocate(self, vg, name, size, tags):
        size = -(-size // (4 * MIB)) * 4 * MIB
        assert self.size - sum(lv.size_bytes for lv in self.lvs.values()) >= size
        self.next_uuid += 1
        self.lvs[name] = lvm.LV(vg=vg, name=name, size_bytes=size, tags=list(tags),
                                attr="-wi-a-----", uuid=f"uuid-{self.next_uuid}")
        self.made.append(name)
        return lvm.lv_path(vg, name)

    def release(self, vg, name, rep=None):
        if name in self.lvs:
            del self.lvs[name]
            self.removed.append(name)
            return True
        return False


class FakeDM:
    def __init__(self):
        self.tables = {}
        self.stats = {}
        self.calls = []

    def info(self, name):
        if name not in self.tables:
            return None
        return dmsetup.Info(name, 0, False, True, 254, len(self.calls), "", 1)

    def create(self, name, table):
        self.calls.append(("create", name, table))
        self.tables[name] = table
        return dmsetup.path(name)

    def remove(self, name):
        self.calls.append(("remove", name))
        return self.tables.pop(name, None) is not None

    def stats_regions(self, name, program):
        return [0] if name in self.stats else []

    def stats_create(self, name, area, program):
        self.stats[name] = area
        return 0


@pytest.fixture
def fakes(monkeypatch):
    vg, dm = FakeVG(), FakeDM()
    monkeypatch.setattr(lvm, "local_report", vg.report)
    monkeypatch.setattr(localvg, "allocate", vg.allocate)
    monkeypatch.setattr(localvg, "release", vg.release)
    monkeypatch.setattr(lvm, "activate", lambda *a: None)
    for name in ("info", "create", "remove", "stats_regions", "stats_create"):
        monkeypatch.setattr(dmsetup, name, getattr(dm, name))
    monkeypatch.setattr(dmsetup, "exists", lambda name: name in dm.tables)
    monkeypatch.setattr(dmsetup, "table", lambda name: dm.tables.get(name))
    monkeypatch.setattr(readcache.tables, "devno", lambda path: path)
    monkeypatch.setattr(readcache, "device_bytes", lambda path: 256 * MIB)
    # Each base device its own LUN serial.
    monkeypatch.setattr(readcache, "kernel_name", os.path.basename)
    monkeypatch.setattr(readcache.iscsi, "unit_serial", lambda kname: f"serial-{kname}")
    ro = []
    monkeypatch.setattr(readcache, "is_readonly", lambda dev: dev in ro)
    monkeypatch.setattr(readcache, "set_readonly", ro.append)
    warmed = []
    monkeypatch.setattr(readcache, "warm", lambda rec, budget: warmed.append(rec.id) or {
        "regions": 0, "bytes": 0, "seconds": 0.0, "complete": True})
    return vg, dm, ro, warmed


def use(cache_id, name="vm-1-disk-0"):
    """A stack file naming the cache: that is what a reference is."""
    state.save_stack(state.StackState(name=name, mode="read", devices={"clone": "/dev/c"},
                                      read_cache=cache_id))


# -- plan ----------------------------------------------------------------------------------------

def test_plan_eviction_is_lru_and_minimal():
    cands = [localvg.Candidate("new", 100, 30.0), localvg.Candidate("old", 100, 10.0),
             localvg.Candidate("mid", 100, 20.0)]
    assert localvg.plan_eviction(cands, 50, 60) == []
    assert localvg.plan_eviction(cands, 150, 60) == ["old"]
    assert localvg.plan_eviction(cands, 250, 60) == ["old", "mid"]
    assert localvg.plan_eviction(cands, 360, 60) == ["old", "mid", "new"]
    assert localvg.plan_eviction(cands, 361, 60) is None
    assert localvg.plan_eviction([], 1, 0) is None


# -- acquire / release ---------------------------------------------------------------------------

def test_acquire_makes_the_replica_over_a_readonly_base(fakes):
    vg, dm, ro, warmed = fakes
    out = readcache.acquire(VG, "ds100-img7@1", "/dev/disk/by-path/base")
    cid = readcache.cache_id("ds100-img7@1")
    assert out == {"id": cid, "key": "ds100-img7@1", "device": f"/dev/mapper/tmi-{cid}",
                   "created": True, "device_created": True, "warmed": None}
    assert vg.made == [f"{cid}-data", f"{cid}-meta"]
    assert vg.lvs[f"{cid}-data"].size_bytes == 256 * MIB
    assert vg.lvs[f"{cid}-meta"].tags == ["tm_iscsi", "tm_iscsi.kind=readcache",
                                          f"tm_iscsi.rc={cid}"]
    assert ro == ["/dev/disk/by-path/base"]
    assert dm.calls == [("create", f"tmi-{cid}",
                         f"0 524288 clone /dev/{VG}/{cid}-meta /dev/{VG}/{cid}-data "
                         "/dev/disk/by-path/base 128 1 no_hydration")]
    assert dm.stats == {f"tmi-{cid}": 128}
    rec = state.load_record(cid)
    assert (rec.key, rec.size_bytes, rec.base_serial, rec.data_uuid) == (
        "ds100-img7@1", 256 * MIB, "serial-base", "uuid-1")
    assert warmed == []

    # A second stack of the image: the same device, warmed with what the first one read.
    again = readcache.acquire(VG, "ds100-img7@1", "/dev/disk/by-path/base")
    assert (again["created"], again["device_created"]) == (False, False)
    assert warmed == [cid] and len(dm.calls) == 1 and vg.made == [f"{cid}-data", f"{cid}-meta"]


def test_lvs_not_the_recorded_ones_are_made_again(fakes):
    vg, dm, ro, warmed = fakes
    readcache.acquire(VG, "k@1", "/dev/b")
    cid = readcache.cache_id("k@1")
    # While its device was down (a reboot), the data LV was re-created behind our back
    # (another uuid): never trust its contents.
    dm.tables.pop(f"tmi-{cid}")
    vg.lvs[f"{cid}-data"].uuid = "someone-else"
    out = readcache.acquire(VG, "k@1", "/dev/b")
    assert out["created"] is True
    assert vg.removed == [f"{cid}-meta", f"{cid}-data"]


def test_a_live_device_over_the_recorded_lvs_is_served_without_a_vg_report(fakes, monkeypatch):
    vg, dm, ro, warmed = fakes
    cid = readcache.acquire(VG, "k@1", "/dev/b")["id"]
    reports = []
    monkeypatch.setattr(lvm, "local_report", lambda *a, **k: reports.append(a) or vg.report(*a))
    out = readcache.acquire(VG, "k@1", "/dev/b")
    assert (out["created"], out["device_created"], reports) == (False, False, [])
    assert warmed == [cid]
    # Over another base device (the base LUN came back as another disk): rebuilt, after a report.
    out = readcache.acquire(VG, "k@1", "/dev/b-again")
    assert out["device_created"] is True and len(reports) == 1
    assert dm.tables[f"tmi-{cid}"].split()[5] == "/dev/b-again"


def test_a_changed_base_size_needs_a_new_key(fakes, monkeypatch):
    readcache.acquire(VG, "k@1", "/dev/b")
    monkeypatch.setattr(readcache, "device_bytes", lambda path: 512 * MIB)
    with pytest.raises(NodeError) as err:
        readcache.acquire(VG, "k@1", "/dev/b")
    assert "new --base-key" in str(err.value)


def test_release_keeps_lvs_and_lets_the_base_go(fakes):
    vg, dm, ro, warmed = fakes
    cid = readcache.acquire(VG, "k@1", "/dev/b")["id"]
    use(cid, "vm-1-disk-0")
    use(cid, "vm-2-disk-0")
    assert readcache.release(VG, cid) == 2
    state.delete_stack("vm-1-disk-0")
    assert readcache.release(VG, cid) == 1 and f"tmi-{cid}" in dm.tables
    state.delete_stack("vm-2-disk-0")
    assert readcache.release(VG, cid) == 0
    # The last user gone: warmed with what it read, device removed, LVs and record kept.
    assert warmed == [cid] and f"tmi-{cid}" not in dm.tables
    assert set(vg.lvs) == {f"{cid}-data", f"{cid}-meta"} and state.load_record(cid)


# -- periodic warm-up ----------------------------------------------------------------------------

def test_periodic_warm_up_copies_into_caches_in_use_only(fakes, monkeypatch):
    vg, dm, ro, warmed = fakes
    used = readcache.acquire(VG, "k@1", "/dev/b1")["id"]
    idle = readcache.acquire(VG, "k@2", "/dev/b2")["id"]
    use(used)
    use(idle, "vm-2-disk-0")
    state.delete_stack("vm-2-disk-0")
    readcache.release(VG, idle)
    warmed.clear()
    out = readcache.warm_active(VG, 60)
    # The released cache has no device (no VM reads it, nothing to learn): left alone.
    assert warmed == [used]
    assert {r["id"]: (r["active"], r["complete"]) for r in out} == {
        used: (True, True), idle: (False, True)}


def test_periodic_warm_up_shares_its_budget_and_goes_on_after_a_failure(fakes, monkeypatch):
    vg, dm, ro, warmed = fakes
    ids = [readcache.acquire(VG, f"k@{n}", f"/dev/b{n}")["id"] for n in range(3)]
    clock = [1000.0]
    monkeypatch.setattr(readcache.time, "monotonic", lambda: clock[0])
    budgets = []

    def warm(rec, budget):
        if rec.id == ids[1]:
            raise OSError(5, "Input/output error")
        budgets.append((rec.id, round(budget, 3)))
        clock[0] += budget
        return {"regions": 1, "bytes": 4096, "seconds": budget, "complete": False}
    monkeypatch.setattr(readcache, "warm", warm)
    out = readcache.warm_active(VG, 30, slice_seconds=5)
    order = [r["id"] for r in out]
    assert sorted(order) == sorted(ids)
    got = {r["id"]: r for r in out}
    assert "Input/output error" in got[ids[1]]["error"]
    # Each cache an equal share of what is left, in slices of 5 s: the failed one took no
    # time, so the ones after it share its part, and none goes past the budget.
    spent = {cid: sum(b for c, b in budgets if c == cid) for cid in ids}
    left = 30.0
    for index, cid in enumerate(order):
        share = 0.0 if cid == ids[1] else left / (len(order) - index)
        assert abs(spent[cid] - share) < 0.01, (index, spent, order)
        left -= share
    assert sum(spent.values()) <= 30.01
    assert all(b <= 5 for _, b in budgets)
    assert all(not r["complete"] for r in out)


def test_cache_warm_command_fails_in_one_line_naming_the_cache(fakes, monkeypatch, capsys):
    from tm_iscsi.node import cli
    vg, dm, ro, warmed = fakes
    cid = readcache.acquire(VG, "k@1", "/dev/b1")["id"]
    capsys.readouterr()

    def broken(rec, budget):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(readcache, "warm", broken)
    assert cli.main(["cache-warm", "--vg", VG, "--seconds", "5"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert cid in err and "Input/output error" in err


def test_a_new_base_key_discards_the_old_cache_once_unused(fakes, monkeypatch):
    vg, dm, ro, warmed = fakes
    clock = iter(range(100, 200))
    monkeypatch.setattr(readcache.time, "time", lambda: next(clock))
    old = readcache.acquire(VG, "img7@1", "/dev/b")["id"]
    use(old, "vm-1-disk-0")
    new = readcache.acquire(VG, "img7@2", "/dev/b")["id"]
    # Still used by a running VM: kept until it lets go.
    assert state.load_record(old) is not None and f"tmi-{old}" in dm.tables
    state.delete_stack("vm-1-disk-0")
    assert readcache.release(VG, old) == 0
    assert state.load_record(old) is None and f"{old}-data" not in vg.lvs
    assert state.load_record(new) is not None
    # And an unused old cache goes at the next acquire of the new key.
    third = readcache.acquire(VG, "img7@3", "/dev/b")["id"]
    assert state.load_record(new) is None and state.load_record(third) is not None


def test_make_room_evicts_unused_caches_lru_first(fakes, monkeypatch):
    vg, dm, ro, warmed = fakes
    vg.size = 700 * MIB
    clock = iter(range(1000, 2000))
    monkeypatch.setattr(readcache.time, "time", lambda: next(clock))
    a = readcache.acquire(VG, "a@1", "/dev/b")["id"]   # 260 MiB each
    b = readcache.acquire(VG, "b@1", "/dev/c")["id"]
    use(b, "vm-9-disk-0")
    for cid in (a, b):
        readcache.release(VG, cid)
    readcache.acquire(VG, "a@1", "/dev/b")  # a is now the most recently used
    state.delete_stack("vm-9-disk-0")
    readcache.release(VG, b)
    readcache.acquire(VG, "a@1", "/dev/b")
    # 180 MiB free; a third cache needs 260: b goes (a was used after it), not a.
    out = readcache.acquire(VG, "c@1", "/dev/d")
    assert out["created"] is True
    assert state.load_record(b) is None and state.load_record(a) is not None
    # Too large for the VG even with every unused cache gone: NoSpace, nothing evicted.
    monkeypatch.setattr(readcache, "device_bytes", lambda path: 2048 * MIB)
    before = dict(vg.lvs)
    with pytest.raises(readcache.NoSpace) as err:
        readcache.acquire(VG, "huge@1", "/dev/e")
    assert "MiB are needed" in str(err.value)
    assert vg.lvs == before


def test_used_caches_are_never_evicted(fakes):
    vg, dm, ro, warmed = fakes
    vg.size = 400 * MIB
    a = readcache.acquire(VG, "a@1", "/dev/b")["id"]
    use(a)
    with pytest.raises(readcache.NoSpace):
        readcache.acquire(VG, "b@1", "/dev/c")
    assert state.load_record(a) is not None
    with pytest.raises(NodeError):
        readcache.evict(VG, a)


def test_orphan_lvs_are_evicted_first(fakes):
    vg, dm, ro, warmed = fakes
    vg.size = 500 * MIB
    vg.allocate(VG, "rc-dead-data", 300 * MIB, localvg.tags("readcache", rc="rc-dead"))
    out = readcache.acquire(VG, "a@1", "/dev/b")
    assert out["created"] and "rc-dead-data" not in vg.lvs


# -- warm-up bookkeeping -------------------------------------------------------------------------

def test_mark_read_and_runs():
    areas = [dmsetup.Area(0, 128, 2, 0), dmsetup.Area(128, 128, 0, 0),
             dmsetup.Area(256, 256, 1, 0), dmsetup.Area(1024, 128, 5, 0)]
    bits = bytearray(2)
    bits[0] = 0b00001000  # region 3 already local
    pending = readcache.mark_read(areas, bits, bytearray(2), 128, 9)
    assert readcache.set_regions(pending, 9) == [0, 2, 8]
    assert readcache.runs([0, 1, 2, 5, 6, 9], 64 * 1024, 10 * 64 * 1024) == [
        (0, 3 * 65536), (5 * 65536, 2 * 65536), (9 * 65536, 65536)]
    # Joined up to 1 MiB; a last region cut by the end of the device.
    assert readcache.runs(list(range(20)), 65536, 20 * 65536 - 4096) == [
        (0, MIB), (MIB, 4 * 65536 - 4096)]
    assert readcache.area_sectors(256 * MIB) == 128
    assert readcache.area_sectors(1 << 40) == 128 * 256


def test_warm_copies_read_regions_once_and_resumes_after_its_budget(tmp_path, monkeypatch):
    dev = tmp_path / "rc"
    data = os.urandom(16 * 65536)
    dev.write_bytes(data)
    monkeypatch.setattr(readcache, "OPEN_FLAGS", os.O_RDWR)
    monkeypatch.setattr(dmsetup, "path", lambda name: str(dev))
    monkeypatch.setattr(readcache, "_stats_region", lambda name: 0)
    reads = [[dmsetup.Area(0, 128, 1, 0), dmsetup.Area(128 * 5, 128 * 3, 4, 0)]]
    monkeypatch.setattr(dmsetup, "stats_print", lambda name, rid, clear=False: reads.pop(0)
                        if reads else [])
    rec = state.ReadCacheRecord("rc-1", "k", VG, "d", "m", "u", "u", len(data), 128)
    out = readcache.warm(rec, budget_seconds=60)
    assert out["regions"] == 4 and out["bytes"] == 4 * 65536 and out["complete"]
    assert dev.read_bytes() == data
    assert readcache.set_regions(state.load_bitmap("rc-1", 16), 16) == [0, 5, 6, 7]
    # Nothing new read: nothing copied.
    assert readcache.warm(rec, 60)["regions"] == 0
    # Out of time: the regions stay pending for the next warm-up.
    reads.append([dmsetup.Area(128 * 10, 128 * 2, 1, 0)])
    out = readcache.warm(rec, budget_seconds=-1)
    assert out == {"regions": 0, "bytes": 0, "seconds": out["seconds"], "complete": False}
    assert readcache.set_regions(state.load_bitmap("rc-1", 16, "pending"), 16) == [10, 11]
    assert readcache.warm(rec, 60)["regions"] == 2
    assert not os.path.exists(state.bitmap_path("rc-1", "pending"))
