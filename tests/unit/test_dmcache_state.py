"""State files: round trips, atomic replacement, reference counts counted from the stack files,
bitmaps, and damaged or foreign files refused in one line."""
import json
import os

import pytest

from dmcache import state
from tm_iscsi.node.errors import NodeError


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def stack(name, mode="read+writeback", cache="rc-1"):
    return state.StackState(
        name=name, mode=mode, devices={"clone": "/dev/disk/by-path/c", "base": "/dev/b",
                                       "map": "/dev/m"},
        luns={"clone": state.Lun("storage", "iqn.2026-11.io.tm-iscsi:vg.c", "s-1")},
        link="/var/lib/one/datastores/0/1/disk.0", base_key="k@1", read_cache=cache,
        wb=state.WriteBack("tmi-cache", "wb-x-data", "wb-x-meta", 1 << 30, 128))


def test_stack_round_trip_and_no_secrets(state_dir):
    st = stack("vm-1-disk-0")
    state.save_stack(st)
    loaded = state.load_stack("vm-1-disk-0")
    assert loaded == st and loaded.created > 0 and loaded.updated >= loaded.created
    doc = json.loads((state_dir / "stacks" / "vm-1-disk-0.json").read_text())
    assert doc["luns"]["clone"] == {"portal": "storage", "iqn": "iqn.2026-11.io.tm-iscsi:vg.c",
                                    "serial": "s-1"}
    assert doc["version"] == 1 and "password" not in json.dumps(doc)
    assert oct(os.stat(state_dir / "stacks").st_mode & 0o777) == "0o700"
    # Saved again: created stays, nothing else is left in the folder (no temporary files).
    first = loaded.created
    state.save_stack(loaded)
    assert state.load_stack("vm-1-disk-0").created == first
    assert os.listdir(state_dir / "stacks") == ["vm-1-disk-0.json"]


def test_list_refs_and_delete():
    assert state.list_stacks() == [] and state.refs("rc-1") == 0
    state.save_stack(stack("vm-1-disk-0"))
    state.save_stack(stack("vm-2-disk-0"))
    state.save_stack(stack("vm-3-disk-0", mode="writeback", cache=None))
    assert [s.name for s in state.list_stacks()] == ["vm-1-disk-0", "vm-2-disk-0",
                                                    "vm-3-disk-0"]
    assert state.refs("rc-1") == 2 and state.refs("rc-2") == 0
    assert state.delete_stack("vm-1-disk-0") is True
    assert state.delete_stack("vm-1-disk-0") is False
    assert state.refs("rc-1") == 1
    assert state.load_stack("nothing") is None


def test_damaged_or_foreign_files_are_refused(state_dir):
    (state_dir / "stacks").mkdir(parents=True)
    (state_dir / "stacks" / "bad.json").write_text("{not json")
    with pytest.raises(NodeError) as err:
        state.load_stack("bad")
    assert "damaged" in str(err.value)
    (state_dir / "stacks" / "v2.json").write_text(json.dumps({"version": 2, "name": "v2"}))
    with pytest.raises(NodeError) as err:
        state.load_stack("v2")
    assert "version 2" in str(err.value)
    for name in ("../etc/passwd", "", "a/b", ".hidden"):
        with pytest.raises(NodeError):
            state.stack_path(name)


def test_records_and_bitmaps():
    rec = state.ReadCacheRecord(id="rc-1", key="k@1", vg="tmi-cache", data_lv="rc-1-data",
                                meta_lv="rc-1-meta", data_uuid="u1", meta_uuid="u2",
                                size_bytes=1 << 20, region_sectors=128, base_serial="s")
    state.save_record(rec)
    assert state.load_record("rc-1") == rec and state.list_records() == [rec]
    bits = state.load_bitmap("rc-1", 20)
    assert bits == bytearray(3)
    bits[1] = 0x81
    state.save_bitmap("rc-1", bits)
    assert state.load_bitmap("rc-1", 20) == bytearray([0, 0x81, 0])
    # A bitmap of another size says nothing about these LVs.
    assert state.load_bitmap("rc-1", 100) == bytearray(13)
    # An empty pending bitmap is no file at all.
    state.save_bitmap("rc-1", bytearray([4, 0, 0]), "pending")
    assert state.load_bitmap("rc-1", 20, "pending")[0] == 4
    state.save_bitmap("rc-1", bytearray(3), "pending")
    assert not os.path.exists(state.bitmap_path("rc-1", "pending"))
    state.delete_record("rc-1")
    assert state.load_record("rc-1") is None
    assert not os.path.exists(state.bitmap_path("rc-1"))


def test_read_counters_add_up_across_warm_ups_and_go_with_the_record(state_dir):
    """dm-stats restarts at each warm-up: what it held is kept as a running total."""
    assert state.load_counters("rc-1") == {"hits": 0, "misses": 0}
    state.add_counters("rc-1", 30, 10)
    state.add_counters("rc-1", 0, 0)
    state.add_counters("rc-1", 5, 1)
    assert state.load_counters("rc-1") == {"hits": 35, "misses": 11}
    state.delete_record("rc-1")
    assert state.load_counters("rc-1") == {"hits": 0, "misses": 0}
