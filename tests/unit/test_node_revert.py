"""lv-revert's decisions with LVM replaced by an in-memory VG: the new content is made before the
old goes, a refusal changes nothing, and a run stopped after any LVM change converges when run
again, ending with the LV a snapshot of the chosen one and no scratch LV left. The lab proves
the same on the real kernel (tests/lab/test_node_storage.py)."""
import copy

import pytest

from tm_iscsi.node import lvm, lvops
from tm_iscsi.node.errors import NodeError

MIB = 1 << 20
TAGS = ["tm_iscsi", "tm_iscsi.kind=image", "tm_iscsi.image=1"]


class Crash(Exception):
    pass


class FakeVG:
    """LVs by name; each change can be made to crash after it is done."""

    def __init__(self, fill=10.0):
        self.lvs = {
            "tpool": lvm.LV("vg-one-100", "tpool", 1 << 30, segtype="thin-pool",
                            attr="twi-aotz--", data_percent=fill, metadata_percent=5.0),
            "img-1": lvm.LV("vg-one-100", "img-1", 64 * MIB, tags=list(TAGS), pool="tpool",
                            segtype="thin", attr="Vwi-a-tz--", uuid="old"),
            "img-1-snap-0": lvm.LV("vg-one-100", "img-1-snap-0", 64 * MIB, origin="img-1",
                                   tags=list(TAGS), pool="tpool", segtype="thin",
                                   attr="Vwi-a-tz--", uuid="snap"),
        }
        self.changes = 0
        self.crash_after = None
        self.next_uuid = 0

    def report(self, vg, missing_ok=False):
        return lvm.VGReport(vg, 1 << 31, 0, 4 * MIB, copy.deepcopy(self.lvs))

    def _changed(self):
        self.changes += 1
        if self.crash_after == self.changes:
            raise Crash(f"killed after change {self.changes}")

    def create_snapshot(self, vg, origin, lv, tags=()):
        assert lv not in self.lvs
        self.next_uuid += 1
        self.lvs[lv] = lvm.LV(vg, lv, self.lvs[origin].size_bytes, origin=origin,
                              tags=list(tags), pool="tpool", segtype="thin",
                              attr="Vwi-a-tz--", uuid=f"new{self.next_uuid}")
        self._changed()

    def rename(self, vg, lv, new_name):
        assert new_name not in self.lvs
        entry = self.lvs.pop(lv)
        entry.name = new_name
        self.lvs[new_name] = entry
        self._changed()

    def remove(self, vg, lv):
        del self.lvs[lv]
        self._changed()


@pytest.fixture
def vg(mocker):
    fake = FakeVG()
    for name in ("create_snapshot", "rename", "remove"):
        mocker.patch.object(lvm, name, side_effect=getattr(fake, name))
    mocker.patch.object(lvops, "require_unexported")
    return fake


def revert(fake, max_fill=90):
    return lvops.replace_with_snapshot(fake.report("vg-one-100"), "img-1", "img-1-snap-0",
                                       TAGS, max_fill)


def converged(fake):
    names = set(fake.lvs)
    assert names == {"tpool", "img-1", "img-1-snap-0"}, names
    assert fake.lvs["img-1"].origin == "img-1-snap-0"
    assert fake.lvs["img-1"].uuid.startswith("new")


def test_revert_makes_the_new_lv_before_the_old_one_goes(vg):
    assert revert(vg) == 64 * MIB
    converged(vg)
    assert vg.changes == 4   # snapshot, two renames, removal


def test_a_pool_over_its_fill_limit_refuses_and_keeps_the_content(vg):
    vg.lvs["tpool"].data_percent = 95.0
    with pytest.raises(NodeError, match="too full"):
        revert(vg)
    assert vg.changes == 0 and vg.lvs["img-1"].uuid == "old"


def test_a_missing_snapshot_is_refused_before_any_change(vg):
    del vg.lvs["img-1-snap-0"]
    with pytest.raises(NodeError, match="does not exist; vg-one-100/img-1 is unchanged"):
        revert(vg)
    assert vg.changes == 0 and vg.lvs["img-1"].uuid == "old"


@pytest.mark.parametrize("crash_after", [1, 2, 3])
def test_a_run_stopped_after_any_change_keeps_the_data_and_the_next_run_converges(
        vg, crash_after):
    vg.crash_after = crash_after
    with pytest.raises(Crash):
        revert(vg)
    # Between the runs the old content is under the LV's name or under its -prev name, or the
    # new content already has the name: never neither.
    holders = {lv.uuid for lv in vg.lvs.values() if lv.name in ("img-1", "img-1-prev")}
    assert "old" in holders or vg.lvs["img-1"].uuid.startswith("new")
    vg.crash_after = None
    revert(vg)
    converged(vg)


def test_a_run_stopped_twice_still_converges(vg):
    for crash_after in (2, 6):
        vg.crash_after = crash_after
        with pytest.raises(Crash):
            revert(vg)
    vg.crash_after = None
    revert(vg)
    converged(vg)


def test_an_lv_that_is_not_tm_iscsi_s_is_not_reverted(vg):
    vg.lvs["img-1"].tags = []
    with pytest.raises(NodeError, match="not tm_iscsi's"):
        revert(vg)
    assert vg.changes == 0
