"""The cache commands' argument checks and refusals (one line, nothing changed), and the
decisions of flush, teardown and dmsetup handling, with dmsetup and LVM replaced by mocks."""
import json
import os
from pathlib import Path

import pytest

from dmcache import dmsetup, readcache, stack, state, writeback
from tm_iscsi.node import cli, locks, lvm
from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError

CLONE = "/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn.2026-11.io.tm-iscsi:vg.vm-1-disk-0-lun-0"
LUNS = {"clone": {"portal": "storage", "iqn": "iqn.2026-11.io.tm-iscsi:vg.vm-1-disk-0",
                  "serial": "6f1c3a52-0000-4f55-9a1e-2b8e4c1d9a07"}}


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def no_system(mocker):
    """Any external program run is a failure of the test: refusals must come first."""
    return mocker.patch.object(_run, "run", side_effect=AssertionError("ran a program"))


def main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("INFO: ")]
    return code, (json.loads(out) if out.strip() else None), lines


@pytest.mark.parametrize("argv", [
    ["stack-assemble", "--name", "a;b", "--mode", "none", "--clone-dev", CLONE],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "readonly", "--clone-dev", CLONE],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", "/etc/passwd"],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", "/dev/../etc/shadow"],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "read", "--clone-dev", CLONE,
     "--base-key", "has space"],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", CLONE,
     "--wb-size-mib", "0"],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", CLONE,
     "--luns-json", "{not json"],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", CLONE,
     "--luns-json", json.dumps({"clone": dict(LUNS["clone"], password="s3cret")})],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", CLONE,
     "--luns-json", json.dumps({"other": LUNS["clone"]})],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", CLONE,
     "--luns-json", json.dumps({"clone": dict(LUNS["clone"], iqn="not an iqn")})],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", CLONE,
     "--luns-json", json.dumps({"clone": dict(LUNS["clone"], portal="st;orage")})],
    ["stack-assemble", "--name", "vm-1-disk-0", "--mode", "none", "--clone-dev", CLONE,
     "--link", "/var/lib/one/../../etc/passwd"],
    ["stack-teardown", "--name", "vm-1-disk-0"],
    ["stack-teardown", "--name", "vm-1-disk-0", "--flush", "--drop"],
    ["stack-flush", "--name", "vm-1-disk-0", "--timeout", "0"],
    ["cache-init", "--device", "ubdb"],
    ["cache-init", "--device", "/dev/ubdb", "--vg", "-rf"],
])
def test_bad_input_is_a_usage_error_and_runs_nothing(capsys, no_system, argv):
    code, out, err = main(capsys, *argv)
    assert code == 2 and out is None and len(err) == 1, err
    assert not no_system.called


def test_link_outside_the_datastores_is_refused(capsys, no_system):
    code, _, err = main(capsys, "stack-assemble", "--name", "vm-1-disk-0", "--mode", "none",
                        "--clone-dev", CLONE, "--link", "/etc/cron.d/x")
    assert code == 1 and "only works under" in err[0]


def test_read_modes_need_base_and_map(capsys, mocker, tmp_path):
    mocker.patch.object(lvm, "local_report", return_value=lvm.VGReport("tmi-cache", 1, 1, 1, {}))
    code, _, err = main(capsys, "stack-assemble", "--name", "vm-1-disk-0", "--mode", "read+writeback",
                        "--clone-dev", "/dev/null", "--base-key", "k@1")
    assert code == 1 and err == ["mode read+writeback needs --base-dev, --map-dev"]


def test_missing_cache_vg_says_how_to_make_it(capsys, mocker):
    mocker.patch.object(lvm, "local_report", return_value=None)
    code, _, err = main(capsys, "stack-assemble", "--name", "vm-1-disk-0", "--mode", "writeback",
                        "--clone-dev", "/dev/null")
    assert code == 1 and "cache-init --device DISK --vg tmi-cache" in err[0]


def test_devices_must_be_block_devices(capsys, mocker):
    code, _, err = main(capsys, "stack-assemble", "--name", "vm-1-disk-0", "--mode", "none",
                        "--clone-dev", "/dev/null")
    assert code == 1 and err == ["--clone-dev /dev/null is not a block device"]
    code, _, err = main(capsys, "stack-assemble", "--name", "vm-1-disk-0", "--mode", "none",
                        "--clone-dev", "/dev/disk/by-path/nothing-here")
    assert code == 1 and "attach the LUN first" in err[0]


# -- stack decisions -----------------------------------------------------------------------------

@pytest.fixture
def fake_dm(mocker):
    devices = {}
    mocker.patch.object(dmsetup, "info", side_effect=lambda n: devices.get(n))
    mocker.patch.object(dmsetup, "settled_info", side_effect=lambda n: devices.get(n))
    mocker.patch.object(dmsetup, "exists", side_effect=lambda n: n in devices)
    mocker.patch.object(dmsetup, "table", side_effect=lambda n: "0 8 error" if n in devices
                        else None)
    for name in ("create", "remove", "reload"):
        mocker.patch.object(dmsetup, name)
    return devices


def dm_dev(name, open_count, minor):
    """A live dm device as dmsetup.info reports it."""
    return dmsetup.Info(name, open_count, False, True, 254, minor, "", 1)


def recorded(name="vm-1-disk-0", mode="read+writeback"):
    st = state.StackState(name=name, mode=mode,
                          devices={"clone": CLONE, "base": "/dev/b", "map": "/dev/m"},
                          base_key="k@1", read_cache=readcache.cache_id("k@1"),
                          wb=writeback.plan("tmi-cache", name, 64 << 20),
                          link="/var/lib/one/datastores/0/1/disk.0")
    state.save_stack(st)
    return st


def test_another_mode_is_refused_before_anything_changes(mocker, fake_dm):
    recorded()
    mocker.patch.object(stack, "check_request", return_value={"clone": 1 << 30})
    acquire = mocker.patch.object(readcache, "acquire")
    with pytest.raises(NodeError) as err:
        stack.assemble(stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev=CLONE))
    assert "exists in mode read+writeback, not writeback" in str(err.value)
    assert "stack-teardown --name vm-1-disk-0 --flush" in str(err.value)
    assert not acquire.called and not dmsetup.create.called
    assert state.load_stack("vm-1-disk-0").mode == "read+writeback"


def test_other_devices_under_a_live_stack_are_refused(mocker, fake_dm):
    recorded()
    fake_dm["tmi-top-vm-1-disk-0"] = dm_dev("tmi-top-vm-1-disk-0", 1, 9)
    mocker.patch.object(stack, "check_request", return_value={"clone": 1 << 30})
    with pytest.raises(NodeError) as err:
        stack.assemble(stack.Request(name="vm-1-disk-0", mode="read+writeback",
                                     clone_dev="/dev/other", base_key="k@1", base_dev="/dev/b",
                                     map_dev="/dev/m"))
    assert "over other devices" in str(err.value)
    assert state.load_stack("vm-1-disk-0").devices["clone"] == CLONE


def test_stray_devices_of_another_mode_are_refused(mocker, fake_dm):
    fake_dm["tmi-top-vm-1-disk-0"] = dm_dev("tmi-top-vm-1-disk-0", 0, 9)
    mocker.patch.object(stack, "check_request", return_value={"clone": 1 << 30})
    with pytest.raises(NodeError) as err:
        stack.assemble(stack.Request(name="vm-1-disk-0", mode="none", clone_dev=CLONE))
    assert "tmi-top-vm-1-disk-0" in str(err.value) and "without a recorded stack" in str(
        err.value)
    assert state.load_stack("vm-1-disk-0") is None


def test_teardown_of_nothing_and_of_a_stack_in_use(capsys, mocker, fake_dm):
    code, out, _ = main(capsys, "stack-teardown", "--name", "vm-1-disk-0", "--flush")
    assert code == 0 and out == {"name": "vm-1-disk-0", "flushed": False,
                                 "dropped_dirty_blocks": 0, "read_cache_key": None,
                                 "read_cache_released": False, "existed": False}
    recorded()
    fake_dm["tmi-top-vm-1-disk-0"] = dm_dev("tmi-top-vm-1-disk-0", 1, 9)
    fake_dm["tmi-wb-vm-1-disk-0"] = dm_dev("tmi-wb-vm-1-disk-0", 1, 8)
    flush = mocker.patch.object(writeback, "flush")
    code, out, err = main(capsys, "stack-teardown", "--name", "vm-1-disk-0", "--drop")
    assert code == 1 and err == ["stack vm-1-disk-0 is in use (tmi-top-vm-1-disk-0 open 1 "
                                 "time(s)); stop the VM first"]
    assert not flush.called and not dmsetup.remove.called
    assert state.load_stack("vm-1-disk-0") is not None


def test_teardown_flush_failure_leaves_the_stack_whole(capsys, mocker, fake_dm):
    recorded()
    fake_dm["tmi-wb-vm-1-disk-0"] = dm_dev("tmi-wb-vm-1-disk-0", 1, 8)
    fake_dm["tmi-top-vm-1-disk-0"] = dm_dev("tmi-top-vm-1-disk-0", 0, 9)
    mocker.patch.object(writeback, "flush", side_effect=NodeError("flush of x timed out"))
    code, _, err = main(capsys, "stack-teardown", "--name", "vm-1-disk-0", "--flush")
    assert code == 1 and err == ["flush of x timed out"]
    assert not dmsetup.remove.called and state.load_stack("vm-1-disk-0") is not None


def test_teardown_waits_for_udev_on_the_top_only(capsys, mocker, fake_dm):
    """The write-back device under a top is open once, by the top: waiting for that count to
    drop (udev's grace, 5 s) before the top goes would only delay every terminate."""
    recorded()
    fake_dm["tmi-top-vm-1-disk-0"] = dm_dev("tmi-top-vm-1-disk-0", 0, 9)
    fake_dm["tmi-wb-vm-1-disk-0"] = dm_dev("tmi-wb-vm-1-disk-0", 1, 8)
    mocker.patch.object(writeback, "flush", return_value={"seconds": 0})
    mocker.patch.object(writeback, "free")
    mocker.patch.object(readcache, "release", return_value=1)
    code, out, err = main(capsys, "stack-teardown", "--name", "vm-1-disk-0", "--flush")
    assert code == 0 and err == [] and out["flushed"] and out["existed"]
    assert [c.args[0] for c in dmsetup.settled_info.call_args_list] == ["tmi-top-vm-1-disk-0"]
    assert [c.args[0] for c in dmsetup.remove.call_args_list] == ["tmi-top-vm-1-disk-0",
                                                                  "tmi-wb-vm-1-disk-0"]
    assert state.load_stack("vm-1-disk-0") is None


def test_teardown_without_a_top_counts_the_write_back_devices_users(capsys, mocker, fake_dm):
    recorded(mode="writeback")
    fake_dm["tmi-wb-vm-1-disk-0"] = dm_dev("tmi-wb-vm-1-disk-0", 1, 8)
    flush = mocker.patch.object(writeback, "flush")
    code, _, err = main(capsys, "stack-teardown", "--name", "vm-1-disk-0", "--flush")
    assert code == 1 and err == ["stack vm-1-disk-0 is in use (tmi-wb-vm-1-disk-0 open 1 "
                                 "time(s)); stop the VM first"]
    assert "tmi-wb-vm-1-disk-0" in [c.args[0] for c in dmsetup.settled_info.call_args_list]
    assert not flush.called and not dmsetup.remove.called


def test_flush_of_an_unknown_stack(capsys, fake_dm):
    code, _, err = main(capsys, "stack-flush", "--name", "vm-9-disk-0")
    assert code == 1 and err == ["no stack named vm-9-disk-0 on this host"]


# -- write-back flush ----------------------------------------------------------------------------

def cache_line(dirty, mode="writeback", policy="smq", meta="rw -"):
    return (f"0 524288 cache 8 9/2048 128 300/1024 0 0 0 0 0 300 {dirty} 2 {mode} "
            f"no_discard_passdown 2 migration_threshold 0 {policy} 0 {meta}")


@pytest.fixture
def wb_dm(mocker):
    lines = []
    mocker.patch.object(dmsetup, "status", side_effect=lambda n: lines.pop(0) if len(lines) > 1
                        else lines[0])
    mocker.patch.object(dmsetup, "table", return_value="0 524288 cache 254:1 254:0 8:16 128 1 "
                        "writeback smq 2 migration_threshold 0")
    mocker.patch.object(dmsetup, "reload")
    mocker.patch.object(writeback.time, "sleep")
    return lines


def test_flush_reloads_the_cleaner_and_waits_for_zero(wb_dm):
    wb_dm += [cache_line(200), cache_line(120, "writethrough", "cleaner"),
              cache_line(40, "writethrough", "cleaner"), cache_line(0, "writethrough", "cleaner")]
    progress = []
    out = writeback.flush("tmi-wb-x", 60, progress.append)
    dmsetup.reload.assert_called_once_with(
        "tmi-wb-x", "0 524288 cache 254:1 254:0 8:16 128 1 writethrough cleaner 2 "
        "migration_threshold 65536")
    assert out["dirty_before_blocks"] == 200 and out["dirty_after_blocks"] == 0
    assert out["block_bytes"] == 65536 and progress[-1].startswith("flushed tmi-wb-x: 200 block")


def test_flush_timeout_and_failed_metadata(wb_dm, mocker):
    wb_dm += [cache_line(200), cache_line(150, "writethrough", "cleaner")]
    clock = iter([0.0, 0.0, 1.0, 5.0, 11.0, 12.0])
    mocker.patch.object(writeback.time, "monotonic", side_effect=lambda: next(clock))
    with pytest.raises(NodeError) as err:
        writeback.flush("tmi-wb-x", 10, lambda m: None)
    assert "timed out after 10s with 150 dirty block(s) (9 MiB) left" in str(err.value)
    wb_dm[:] = [cache_line(5, meta="ro needs_check")]
    with pytest.raises(NodeError) as err:
        writeback.flush("tmi-wb-x", 10)
    assert "needs_check" in str(err.value) and "cache_repair" in str(err.value)
    assert dmsetup.reload.call_count == 1


def test_flush_of_a_clean_cache_changes_nothing_twice(wb_dm):
    wb_dm += [cache_line(0, "writethrough", "cleaner")]
    out = writeback.flush("tmi-wb-x", 60, lambda m: None)
    assert out["dirty_before_blocks"] == 0 and not dmsetup.reload.called


def test_writeback_table_keeps_dirty_blocks_on_the_host():
    wb = writeback.plan("tmi-cache", "vm-1-disk-0", 64 << 20)
    assert (wb.data_lv, wb.meta_lv) == ("wb-vm-1-disk-0-data", "wb-vm-1-disk-0-meta")
    assert writeback.table(wb, "/dev/sdb", 1024) == (
        "0 1024 cache /dev/tmi-cache/wb-vm-1-disk-0-meta /dev/tmi-cache/wb-vm-1-disk-0-data "
        "/dev/sdb 128 1 writeback smq 2 migration_threshold 0")
    assert writeback.is_writeback("0 1 cache 1:1 1:2 1:3 128 1 writeback smq 2 "
                                  "migration_threshold 0")
    assert not writeback.is_writeback("0 1 cache 1:1 1:2 1:3 128 1 writeback smq 0")
    assert not writeback.is_writeback("0 1 cache 1:1 1:2 1:3 128 1 writethrough cleaner 2 "
                                      "migration_threshold 65536")


# -- dmsetup ---------------------------------------------------------------------------------------

def test_dmsetup_parsing():
    info = dmsetup.parse_info("tmi-top-vm-1|1|L--w|254|6||1\n")
    assert (info.name, info.open_count, info.suspended, info.live_table, info.devno) == (
        "tmi-top-vm-1", 1, False, True, "254:6")
    assert dmsetup.parse_info("x|0|LI-w|254|1|u|1").suspended is False
    assert dmsetup.parse_info("x|0|L-sw|254|1|u|1").suspended is True  # libdm: L I s r/w
    with pytest.raises(NodeError):
        dmsetup.parse_info("garbage")
    assert dmsetup.parse_ls("No devices found\n") == []
    assert dmsetup.parse_ls("tmi-wb-a\t(254:5)\ntmi--cache-x\t(254:0)\nother\t(254:1)\n",
                            "tmi-") == ["tmi--cache-x", "tmi-wb-a"]
    areas = dmsetup.parse_stats_print("0+128 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
                                      "640+128 1 0 128 0 2 0 0 0 0 0 0 0 0\n")
    assert [(a.start, a.length, a.reads, a.writes) for a in areas] == [(0, 128, 0, 0),
                                                                       (640, 128, 1, 2)]


def test_dmsetup_remove_refuses_an_open_device(mocker):
    mocker.patch.object(dmsetup, "settled_info", return_value=dmsetup.Info(
        "d", 2, False, True, 1, 1, "", 1))
    run = mocker.patch.object(_run, "run")
    with pytest.raises(NodeError) as err:
        dmsetup.remove("d")
    assert "in use (open 2 time(s))" in str(err.value) and not run.called
    dmsetup.settled_info.return_value = None
    assert dmsetup.remove("d") is False and not run.called


def test_a_udev_probe_is_not_a_user(mocker):
    """Right after our own writes udev's blkid holds the device for a moment."""
    states = [1, 1, 0]
    mocker.patch.object(dmsetup, "info", side_effect=lambda name: dmsetup.Info(
        name, states.pop(0), False, True, 254, 3, "", 1))
    settle = mocker.patch.object(dmsetup, "settle")
    mocker.patch.object(dmsetup.time, "sleep")
    assert dmsetup.settled_info("tmi-rc-1").open_count == 0
    settle.assert_called_once()
    # Really in use: still open after the grace period.
    mocker.patch.object(dmsetup, "info", return_value=dmsetup.Info("x", 1, False, True, 1, 1,
                                                                   "", 1))
    clock = iter([0.0, 1.0, 6.0])
    mocker.patch.object(dmsetup.time, "monotonic", side_effect=lambda: next(clock))
    assert dmsetup.settled_info("x").open_count == 1


def test_dmsetup_create_clears_a_stale_file_node(tmp_path, mocker):
    mocker.patch.object(dmsetup, "MAPPER_DIR", str(tmp_path))
    (tmp_path / "tmi-wb-x").write_text("left by a failed dd of=")
    run = mocker.patch.object(_run, "run")
    mocker.patch.object(dmsetup, "wait_node", return_value=str(tmp_path / "tmi-wb-x"))
    dmsetup.create("tmi-wb-x", "0 8 error")
    assert not os.path.exists(tmp_path / "tmi-wb-x")
    assert run.call_args[0][0] == ["dmsetup", "create", "tmi-wb-x", "--table", "0 8 error"]


# -- no room in the local VG -----------------------------------------------------------------------

@pytest.fixture
def assemble_env(mocker, fake_dm):
    mocker.patch.object(stack, "check_request", return_value={"clone": 1 << 30})
    mocker.patch.object(stack, "replace_symlink")
    mocker.patch.object(readcache, "is_readonly", return_value=False)
    mocker.patch.object(readcache, "set_readonly")
    mocker.patch.object(dmsetup, "create", side_effect=lambda name, table: fake_dm.__setitem__(
        name, dmsetup.Info(name, 0, False, True, 254, len(fake_dm), "", 1)))
    return fake_dm


def test_no_room_for_a_read_cache_reads_the_base_directly(mocker, assemble_env):
    mocker.patch.object(readcache, "acquire", side_effect=readcache.NoSpace("only 10 MiB free"))
    out = stack.assemble(stack.Request(name="vm-1-disk-0", mode="read", clone_dev="/dev/c",
                                       base_key="k@1", base_dev="/dev/b", map_dev="/dev/m"))
    assert out["layers"]["read_cache"] is None and "reading the base directly" in out["degraded"]
    name, table = dmsetup.create.call_args[0]
    assert name == "tmi-top-vm-1-disk-0"
    assert table == "0 2097152 clone /dev/m /dev/c /dev/b 128 1 no_hydration"
    readcache.set_readonly.assert_called_once_with("/dev/b")
    st = state.load_stack("vm-1-disk-0")
    assert st.read_cache is None and st.phase == "assembled" and st.degraded
    # Not counted as a user of the image's cache.
    assert state.refs(readcache.cache_id("k@1")) == 0


def test_write_back_cache_shrinks_then_refuses(mocker, assemble_env):
    rep = lvm.VGReport("tmi-cache", 4 << 30, 300 << 20, 4 << 20, {})
    mocker.patch.object(lvm, "local_report", return_value=rep)
    mocker.patch.object(writeback, "free")
    allocate = mocker.patch.object(writeback, "allocate")
    mocker.patch.object(readcache, "make_room", side_effect=lambda vg, need, rep=None: (
        rep if need <= 300 << 20 else (_ for _ in ()).throw(readcache.NoSpace("full"))))
    out = stack.assemble(stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev="/dev/c",
                                       wb_size_bytes=1 << 30))
    wb = allocate.call_args[0][0]
    assert wb.size_bytes == 256 << 20 and "shrunk to 256 MiB" in out["degraded"]
    assert state.load_stack("vm-1-disk-0").wb.size_bytes == 256 << 20

    state.delete_stack("vm-1-disk-0")
    assemble_env.clear()
    readcache.make_room.side_effect = readcache.NoSpace("full")
    with pytest.raises(stack.NoSpaceForWriteback) as err:
        stack.assemble(stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev="/dev/c"))
    assert "at least 64 MiB" in str(err.value)
    # A refused new stack leaves nothing behind: no device, no state file.
    assert "tmi-wb-vm-1-disk-0" not in assemble_env
    assert state.load_stack("vm-1-disk-0") is None


def test_a_new_write_back_cache_reads_the_local_vg_once(mocker, assemble_env):
    """Each report is a full `vgs` (0.2-0.5 s on a busy host): the one read under the VG lock
    serves the half-made-pair check and the free-space check; the LVs lvcreate has just made are
    active, so nothing reads the VG again after them."""
    rep = lvm.VGReport("tmi-cache", 4 << 30, 300 << 20, 4 << 20, {})
    report = mocker.patch.object(lvm, "local_report", return_value=rep)
    allocate = mocker.patch.object(writeback, "allocate")
    activate = mocker.patch.object(lvm, "activate")
    stack.assemble(stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev="/dev/c",
                                 wb_size_bytes=64 << 20))
    assert allocate.call_count == 1 and report.call_count == 1
    activate.assert_not_called()


def test_a_prepared_write_back_stack_is_assembled_without_making_or_reading_its_lvs_again(
        mocker, assemble_env):
    """prepare() runs while the host logs in to the LUNs: it records the stack and makes its
    LVs; assemble() then only builds the devices over them."""
    rep = lvm.VGReport("tmi-cache", 4 << 30, 300 << 20, 4 << 20, {})
    report = mocker.patch.object(lvm, "local_report", return_value=rep)
    allocate = mocker.patch.object(writeback, "allocate")
    req = stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev="/dev/c",
                        wb_size_bytes=64 << 20)
    assert stack.prepare(req, 1 << 30) is True
    st = state.load_stack("vm-1-disk-0")
    assert st.phase == "assembling" and st.wb.size_bytes == 64 << 20 and not assemble_env
    assert allocate.call_count == 1 and report.call_count == 1
    # Again (a re-run): the stack exists now, so prepare leaves it to assemble.
    assert stack.prepare(req, 1 << 30) is False and allocate.call_count == 1
    req.wb_made = True
    out = stack.assemble(req)
    assert allocate.call_count == 1 and report.call_count == 1
    assert set(assemble_env) == {"tmi-wb-vm-1-disk-0"} and out["kept"] is False
    assert state.load_stack("vm-1-disk-0").phase == "assembled"


def test_a_prepared_stack_over_other_devices_makes_its_lvs_again(mocker, assemble_env):
    """udev named a LUN otherwise than expected: the recorded stack is not the one asked for,
    so its LVs go and new ones are made (never a cache kept for other devices)."""
    rep = lvm.VGReport("tmi-cache", 4 << 30, 300 << 20, 4 << 20, {})
    mocker.patch.object(lvm, "local_report", return_value=rep)
    free = mocker.patch.object(writeback, "free")
    allocate = mocker.patch.object(writeback, "allocate")
    stack.prepare(stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev="/dev/c"),
                  1 << 30)
    stack.assemble(stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev="/dev/sdq",
                                 wb_made=True))
    assert allocate.call_count == 2 and free.called
    assert state.load_stack("vm-1-disk-0").devices["clone"] == "/dev/sdq"


def test_a_prepared_stack_is_taken_back_whole(mocker, assemble_env):
    rep = lvm.VGReport("tmi-cache", 4 << 30, 300 << 20, 4 << 20, {})
    mocker.patch.object(lvm, "local_report", return_value=rep)
    mocker.patch.object(writeback, "allocate")
    free = mocker.patch.object(writeback, "free")
    req = stack.Request(name="vm-1-disk-0", mode="writeback", clone_dev="/dev/c")
    stack.prepare(req, 1 << 30)
    stack.discard(req)
    assert state.load_stack("vm-1-disk-0") is None
    assert free.call_args[0][0].data_lv == "wb-vm-1-disk-0-data"


def test_no_stack_is_prepared_over_an_existing_one_or_without_write_back(mocker, assemble_env):
    allocate = mocker.patch.object(writeback, "allocate")
    assert stack.prepare(stack.Request(name="vm-1-disk-0", mode="read", clone_dev="/dev/c"),
                         1 << 30) is False
    recorded("vm-2-disk-0")
    assert stack.prepare(stack.Request(name="vm-2-disk-0", mode="writeback",
                                       clone_dev="/dev/c"), 1 << 30) is False
    assert not allocate.called


def test_a_new_stack_asks_dmsetup_about_its_own_devices_once(mocker, assemble_env):
    """Missing at the start under the stack's lock means missing until this call makes them:
    one `dmsetup info` each (0.1-0.2 s apiece in the lab), no second look before creating."""
    rep = lvm.VGReport("tmi-cache", 4 << 30, 300 << 20, 4 << 20, {})
    mocker.patch.object(lvm, "local_report", return_value=rep)
    mocker.patch.object(writeback, "allocate")
    mocker.patch.object(readcache, "acquire", return_value={
        "id": "rc-1", "device": "/dev/mapper/tmi-rc-1", "created": False,
        "device_created": False})
    mocker.patch.object(stack.tables, "devno", side_effect=lambda path: path)
    stack.assemble(stack.Request(name="vm-1-disk-0", mode="read+writeback", clone_dev="/dev/c",
                                 base_key="k@1", base_dev="/dev/b", map_dev="/dev/m"))
    asked = [c.args[0] for c in dmsetup.info.call_args_list]
    assert asked.count("tmi-top-vm-1-disk-0") == 1 and asked.count("tmi-wb-vm-1-disk-0") == 1
    assert dmsetup.table.call_count == 0
    assert set(assemble_env) == {"tmi-top-vm-1-disk-0", "tmi-wb-vm-1-disk-0"}


def test_released_means_nothing_reads_the_base_any_more(mocker, fake_dm):
    recorded("vm-1-disk-0")
    degraded = recorded("vm-2-disk-0")
    degraded.read_cache = None  # built over the base directly for lack of room
    state.save_stack(degraded)
    mocker.patch.object(writeback, "free")
    release = mocker.patch.object(readcache, "release", return_value=0)
    out = stack.teardown("vm-1-disk-0", True, 60)
    assert out["read_cache_key"] == "k@1" and out["read_cache_released"] is False
    release.assert_called_once_with("tmi-cache", readcache.cache_id("k@1"))
    out = stack.teardown("vm-2-disk-0", True, 60)
    assert out["read_cache_released"] is True and release.call_count == 1


# -- cache-init --------------------------------------------------------------------------------

@pytest.fixture
def disk(mocker):
    from dmcache import localvg
    mocker.patch.object(localvg, "_block_device", return_value="sdz")
    mocker.patch.object(localvg, "_in_use", return_value=[])
    mocker.patch.object(localvg, "signatures", return_value=[])
    mocker.patch.object(lvm, "create_vg")
    return localvg


@pytest.mark.parametrize("vg_exists, owner, found, busy, message", [
    (True, "tmi-cache", [], [], None),
    (True, None, [], [], "already exists on another disk"),
    (False, "vg-one-100", [], [], "is a PV of volume group vg-one-100"),
    (False, None, ["TYPE=ext4"], [], "holds data (TYPE=ext4)"),
    (False, None, ["PTTYPE=gpt"], [], "holds data (PTTYPE=gpt)"),
    (False, None, [], ["is mounted"], "is mounted"),
    (False, "", [], [], None),  # an orphan PV left by an interrupted init
    (False, None, [], [], None),
])
def test_cache_init_decisions(capsys, mocker, disk, vg_exists, owner, found, busy, message):
    reports = [lvm.VGReport("tmi-cache", 6 << 30, 6 << 30, 4 << 20, {})] * 2
    mocker.patch.object(lvm, "local_report", side_effect=lambda vg, missing_ok=False: (
        reports.pop() if vg_exists or lvm.create_vg.called else None))
    mocker.patch.object(lvm, "pv_vg", return_value=owner)
    disk.signatures.return_value = found
    disk._in_use.return_value = busy
    code, out, err = main(capsys, "cache-init", "--device", "/dev/sdz")
    if message:
        assert code == 1 and len(err) == 1 and message in err[0]
        assert not lvm.create_vg.called
    else:
        assert code == 0 and out == {"vg": "tmi-cache", "size_bytes": 6 << 30,
                                     "created": not vg_exists}
        assert lvm.create_vg.called is (not vg_exists)


def test_the_cache_vg_is_the_one_install_sh_named(tmp_path):
    import subprocess
    import sys
    conf = tmp_path / "node.conf"
    conf.write_text("# install.sh\nROLES=host\nCACHE_VG=vg-tm-iscsi-cache\n")
    code = "from dmcache import localvg; print(localvg.DEFAULT_VG)"
    repo = str(Path(__file__).resolve().parents[2])
    named = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=repo, env={"TM_ISCSI_NODE_CONF": str(conf), "PATH": "/usr/bin:/bin"},
                           check=True).stdout.strip()
    unset = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=repo, env={"TM_ISCSI_NODE_CONF": str(tmp_path / "none"),
                                          "PATH": "/usr/bin:/bin"}, check=True).stdout.strip()
    assert (named, unset) == ("vg-tm-iscsi-cache", "tmi-cache")
