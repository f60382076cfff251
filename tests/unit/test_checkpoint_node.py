"""The storage node's checkpoint decisions with LVM replaced by an in-memory VG: take makes
`<lv>-ckpt-next` for the guarded host only; commit replaces the checkpoint by renames, and at
every point a run can stop, a valid checkpoint is left (the old one or the new one, never the
uncommitted snapshot) and a re-run converges; host-lost puts each guarded disk back to its
checkpoint, clears the guard, and converges after a stop at any LVM change. The lab proves the
same on the real kernel (tests/lab/test_checkpoint.py)."""
import pytest

from tests.unit.test_node_revert import MIB, Crash, FakeVG as _RevertVG
from tm_iscsi import protocol
from tm_iscsi.node import lio, locks, lvm, lvops, txn_checkpoint
from tm_iscsi.node.errors import NodeError

VG = "vg-one-100"
CLONE = "vm-0-disk-0"
CKPT = "vm-0-disk-0-ckpt"
GUARD = protocol.WB_HOST_TAG + "host1"
CLONE_TAGS = ["tm_iscsi", "tm_iscsi.kind=clone", "tm_iscsi.vm=0", "tm_iscsi.disk=0", GUARD]


class FakeVG(_RevertVG):
    def __init__(self):
        super().__init__()
        self.lvs[CLONE] = lvm.LV(VG, CLONE, 64 * MIB, origin="img-1", tags=list(CLONE_TAGS),
                                 pool="tpool", segtype="thin", attr="Vwi-a-tz--", uuid="clone")

    def create_snapshot(self, vg, origin, lv, tags=(), active=True):
        super().create_snapshot(vg, origin, lv, tags)

    def change_tags(self, vg, lv, add=(), delete=()):
        entry = self.lvs[lv]
        entry.tags = sorted((set(entry.tags) - set(delete)) | set(add))
        self._changed()


@pytest.fixture
def vg(mocker, monkeypatch, tmp_path):
    fake = FakeVG()
    for name in ("create_snapshot", "rename", "remove", "change_tags"):
        mocker.patch.object(lvm, name, side_effect=getattr(fake, name))
    mocker.patch.object(lvm, "report", side_effect=fake.report)
    mocker.patch.object(lvops, "require_unexported")
    for name in ("unexport", "save_config"):
        mocker.patch.object(lio, name)
    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path / "locks"))
    mocker.patch.object(lio, "config_lock", side_effect=lambda: locks.lock("lio", "config"))
    return fake


def _take(host="host1"):
    return txn_checkpoint._take(protocol.CheckpointTake(vg=VG, host=host, lvs=[CLONE]))


def _commit(valid=True):
    return txn_checkpoint._commit(protocol.CheckpointCommit(vg=VG, host="host1", lvs=[CLONE],
                                                            valid=valid))


def _lost(**kw):
    return txn_checkpoint._host_lost(protocol.HostLost(vg=VG, host="host1", **kw))


def _valid_checkpoint(fake):
    return txn_checkpoint.last_checkpoint(fake.report(VG), CLONE, "host1")


def test_take_makes_the_next_checkpoint_for_the_guarded_host_only(vg):
    answer = _take()
    (disk,) = answer["disks"]
    made = vg.lvs[disk["snapshot"]]
    assert disk["snapshot"] == CKPT + "-next" and made.origin == CLONE
    assert protocol.CKPT_HOST_TAG + "host1" in made.tags
    assert "tm_iscsi.kind=checkpoint" in made.tags and "tm_iscsi.vm=0" in made.tags
    assert not [t for t in made.tags if t.startswith(protocol.WB_HOST_TAG)]
    with pytest.raises(NodeError, match="write-back data on host1, not on host2"):
        _take("host2")
    # A stale -next of a failed run is never kept: the new one is cut now.
    _take()
    assert vg.lvs[CKPT + "-next"].uuid != made.uuid


def test_an_invalid_snapshot_never_replaces_the_checkpoint(vg):
    _take()
    _commit()
    kept = vg.lvs[CKPT].uuid
    _take()
    assert _commit(valid=False)["disks"][0] == {"lv": CLONE, "committed": False, "removed": True}
    assert vg.lvs[CKPT].uuid == kept and CKPT + "-next" not in vg.lvs


@pytest.mark.parametrize("crash_after", range(1, 4))
def test_a_commit_stopped_anywhere_leaves_a_checkpoint_and_converges(vg, crash_after):
    _take()
    _commit()
    old = vg.lvs[CKPT].uuid
    _take()
    new = vg.lvs[CKPT + "-next"].uuid
    vg.changes, vg.crash_after = 0, crash_after
    with pytest.raises(Crash):
        _commit()
    vg.crash_after = None
    assert _valid_checkpoint(vg).uuid in (old, new)
    assert _commit()["disks"][0]["committed"] is True
    assert {n for n in vg.lvs if "ckpt" in n} == {CKPT} and vg.lvs[CKPT].uuid == new
    assert _commit()["disks"][0]["committed"] is True        # and again: nothing to do


def test_host_lost_puts_the_disk_back_to_its_checkpoint_and_clears_the_guard(vg):
    _take()
    _commit()
    vg.lvs[CLONE].uuid = "written-after"
    (disk,) = _lost()["disks"]
    assert disk["recovered"] and disk["checkpoint"] == CKPT and disk["age_seconds"] >= 0
    clone = vg.lvs[CLONE]
    assert clone.origin == CKPT and GUARD not in clone.tags and "tm_iscsi.vm=0" in clone.tags
    assert CKPT in vg.lvs and CLONE + "-prev" not in vg.lvs
    assert _lost()["disks"] == []
    # A new write-back epoch: host1's cache of the disk, should it come back, is void.
    epochs = [t for t in clone.tags if t.startswith(protocol.WB_EPOCH_TAG)]
    assert len(epochs) == 1 and len(epochs[0]) == len(protocol.WB_EPOCH_TAG) + 16


@pytest.mark.parametrize("crash_after", range(1, 4))
def test_host_lost_stopped_after_any_change_converges(vg, crash_after):
    _take()
    _commit()
    vg.changes, vg.crash_after = 0, crash_after
    with pytest.raises(Crash):
        _lost()
    vg.crash_after = None
    _lost()
    clone = vg.lvs[CLONE]
    assert clone.origin == CKPT and GUARD not in clone.tags
    assert set(vg.lvs) == {"tpool", "img-1", "img-1-snap-0", CLONE, CKPT}


def test_host_lost_without_a_checkpoint_keeps_the_guard_unless_told(vg):
    (disk,) = _lost()["disks"]
    assert disk["recovered"] is False and "no checkpoint" in disk["reason"]
    assert GUARD in vg.lvs[CLONE].tags
    (disk,) = _lost(without_checkpoint=True)["disks"]
    assert disk["recovered"] and disk["checkpoint"] is None
    assert GUARD not in vg.lvs[CLONE].tags and vg.lvs[CLONE].uuid == "clone"
    assert any(t.startswith(protocol.WB_EPOCH_TAG) for t in vg.lvs[CLONE].tags)


def test_a_checkpoint_of_another_host_bounds_nothing_of_this_one(vg):
    _take()
    _commit()
    vg.lvs[CKPT].tags = [t.replace("ckpt-host=host1", "ckpt-host=host2")
                         for t in vg.lvs[CKPT].tags]
    (disk,) = _lost()["disks"]
    assert disk["recovered"] is False and vg.lvs[CLONE].uuid == "clone"
