"""The node helper's commands with LVM, LIO and iscsiadm mocked: what they decide from the state
they read, the errors they give, and that a refusal changes nothing. The lab tests prove the same
commands on the real kernel; these pin the decisions down cheaply."""
import io
import json
import os
import sys

import pytest

from tm_iscsi import naming
from tm_iscsi.node import cli, cmd_host, cmd_storage, iscsi, lio, locks, lvm, nodeconf, targets
from tm_iscsi.node.errors import NodeError

from tests.unit.test_node_lvm import VGS_JSON as _SAMPLE_JSON

# The sample report with its LVs under tm_iscsi's names (the helper refuses any other name):
# a -> img-1, its snapshot b -> img-2.
VGS_JSON = (_SAMPLE_JSON.replace('"lv_name":"a"', '"lv_name":"img-1"')
            .replace('"lv_name":"b"', '"lv_name":"img-2"')
            .replace('"origin":"a"', '"origin":"img-1"')
            .replace('"lv_tags":"x"', '"lv_tags":"tm_iscsi.x=1"'))

MIB = 1024 * 1024


# The sample report, with b made tm_iscsi's too (the helper acts only on LVs with its tag).
OWNED_JSON = VGS_JSON.replace('"lv_tags":"tm_iscsi.x=1"', '"lv_tags":"tm_iscsi,tm_iscsi.x=1"')
# ...and one LV of somebody else's in the same VG.
_FOREIGN = ('{"vg_name":"vgt", "vg_size":"25765609472", "vg_free":"12859736064", '
            '"vg_extent_size":"4194304", "lv_name":"img-50", "lv_size":"67108864", '
            '"origin":"", "lv_tags":"", "lv_attr":"Vwi-a-tz--", "pool_lv":"tpool", '
            '"data_percent":"3.00", "metadata_percent":"", "lv_metadata_size":"", '
            '"segtype":"thin"},\n')
OWNED_JSON = OWNED_JSON.replace('{"vg_name":"vgt", "vg_size":"25765609472", '
                                '"vg_free":"12859736064", "vg_extent_size":"4194304", '
                                '"lv_name":"img-1"', _FOREIGN + '{"vg_name":"vgt", '
                                '"vg_size":"25765609472", "vg_free":"12859736064", '
                                '"vg_extent_size":"4194304", "lv_name":"img-1"', 1)


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture(autouse=True)
def node_conf(tmp_path, tmp_path_factory, monkeypatch):
    """This node's node.conf: its VG is vgt, its datastores directory the test's tmp_path."""
    conf = tmp_path_factory.mktemp("etc") / "node.conf"
    conf.write_text(f"ROLES=storage,host\nVG_NAME=vgt\nTHIN_POOL=tpool\n"
                    f"DATASTORES={tmp_path}\n")
    monkeypatch.setattr(nodeconf, "PATH", str(conf))
    return conf


@pytest.fixture
def lvm_mock(mocker):
    """LVM as the sample report has it (pool 12.5% full, thin LV a, snapshot b of a); every
    change is a mock to assert on."""
    mocker.patch.object(lvm, "report", side_effect=lambda vg, missing_ok=False:
                        lvm.parse_vg_report(vg, OWNED_JSON))
    for name in ("create_thin_pool", "create_thin", "create_snapshot", "extend", "activate",
                 "remove"):
        mocker.patch.object(lvm, name)
    return lvm


def main(capsys, *argv, stdin=None):
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = cli.main(list(argv))
    finally:
        sys.stdin = saved
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def changes(lvm_mock):
    return [name for name in ("create_thin_pool", "create_thin", "create_snapshot", "extend",
                              "activate", "remove") if getattr(lvm_mock, name).called]


@pytest.mark.parametrize("argv", [
    ["lv-create", "--vg", "a;b", "--lv", "img-9", "--size-mib", "1"],
    ["lv-create", "--vg", "vgt", "--lv", "$(reboot)", "--size-mib", "1"],
    ["lv-create", "--vg", "vgt", "--lv", "img-9", "--size-mib", "0"],
    ["lv-create", "--vg", "vgt", "--lv", "img-9", "--size-mib", "1", "--tag", "a b"],
    ["lv-create", "--vg", "vgt", "--lv", "img-9", "--size-mib", "1", "--max-fill", "101"],
    ["lv-remove", "--vg", "vgt", "--lv", "-rf"],
    ["pool-ensure", "--vg", "vgt", "--data-percent", "0"],
    ["export", "--vg", "vgt", "--lv", "img-1", "--initiator", "iqn.2026-11.x:h1`id`"],
    ["export", "--vg", "vgt", "--lv", "img-1", "--initiator", "iqn.2026-11.x:h1",
     "--portal-ip", "storage"],
    ["export", "--vg", "vgt", "--lv", "img-1", "--initiator", "iqn.2026-11.x:h1",
     "--chap-user", "has space"],
    ["export", "--vg", "vgt", "--lv", "img-1", "--initiator", "iqn.2026-11.x:h1",
     "--chap-password", "a-secret-in-argv"],
    ["lv-mkfs", "--vg", "vgt", "--lv", "img-1", "--fs", "ntfs"],
    ["lv-write", "--vg", "vgt", "--lv", "img-1", "--format", "vmdk"],
    ["lv-create", "--vg", "vgt", "--lv", "img-9"],
])
def test_bad_input_is_a_usage_error_and_touches_nothing(capsys, lvm_mock, argv):
    code, out, err = main(capsys, *argv)
    assert code == 2 and out is None
    assert len(err.strip().splitlines()) == 1
    assert not lvm_mock.report.called and changes(lvm_mock) == []


def test_pool_ensure(capsys, lvm_mock):
    assert main(capsys, "pool-ensure", "--vg", "vgt")[:2] == (
        0, {"vg": "vgt", "pool": "tpool", "created": False})
    code, out, _ = main(capsys, "pool-ensure", "--vg", "vgt", "--pool", "pool2",
                        "--data-percent", "50")
    assert out["created"] is True
    lvm_mock.create_thin_pool.assert_called_once_with("vgt", "pool2", 50)
    code, _, err = main(capsys, "pool-ensure", "--vg", "vgt", "--pool", "img-1")
    assert code == 1 and "not a thin pool" in err


def test_lv_create_new_existing_and_refusals(capsys, lvm_mock):
    code, out, _ = main(capsys, "lv-create", "--vg", "vgt", "--lv", "img-10", "--size-mib", "10",
                        "--tag", "tm_iscsi.t=1")
    assert code == 0 and out == {"vg": "vgt", "lv": "img-10", "path": "/dev/vgt/img-10",
                                 "size_bytes": 12 * MIB, "created": True}
    # Stamped with the ownership tag, whatever was asked.
    lvm_mock.create_thin.assert_called_once_with("vgt", "tpool", "img-10", 12 * MIB,
                                                 ["tm_iscsi", "tm_iscsi.t=1"], pool_active=True)

    # Existing with the same tags (any order): nothing to do; larger request: grow.
    lvm_mock.create_thin.reset_mock()
    argv = ["lv-create", "--vg", "vgt", "--lv", "img-1", "--tag", "tm_iscsi.kind=image",
            "--tag", "tm_iscsi"]
    assert main(capsys, *argv, "--size-mib", "64")[1]["created"] is False
    assert changes(lvm_mock) == []
    assert main(capsys, *argv, "--size-mib", "100")[1]["size_bytes"] == 100 * MIB
    lvm_mock.extend.assert_called_once_with("vgt", "img-1", 100 * MIB)

    lvm_mock.extend.reset_mock()
    code, _, err = main(capsys, "lv-create", "--vg", "vgt", "--lv", "img-1", "--size-mib", "64")
    assert code == 1 and "tags" in err
    code, _, err = main(capsys, "lv-create", "--vg", "vgt", "--lv", "img-2", "--size-mib", "64",
                        "--tag", "tm_iscsi.x=1", "--tag", "tm_iscsi")
    assert code == 1 and "snapshot of img-1" in err
    # The sample pool is 12.5% full: a 10% limit refuses, and nothing is created.
    code, _, err = main(capsys, "lv-create", "--vg", "vgt", "--lv", "img-10", "--size-mib", "1",
                        "--max-fill", "10")
    assert code == 1 and "too full" in err and "vgt/tpool" in err
    code, _, err = main(capsys, "lv-create", "--vg", "vgt", "--pool", "nopool", "--lv", "img-11",
                        "--size-mib", "1")
    assert code == 1 and "pool-ensure" in err
    assert changes(lvm_mock) == []


def test_lv_snapshot(capsys, lvm_mock):
    code, out, _ = main(capsys, "lv-snapshot", "--vg", "vgt", "--origin", "img-1", "--lv",
                        "vm-3-disk-0", "--tag", "tm_iscsi.k=v", "--size-mib", "100")
    assert out == {"vg": "vgt", "lv": "vm-3-disk-0", "origin": "img-1",
                   "path": "/dev/vgt/vm-3-disk-0", "size_bytes": 100 * MIB, "created": True}
    lvm_mock.create_snapshot.assert_called_once_with("vgt", "img-1", "vm-3-disk-0",
                                                     ["tm_iscsi", "tm_iscsi.k=v"],
                                                     pool_active=True)
    lvm_mock.extend.assert_called_once_with("vgt", "vm-3-disk-0", 100 * MIB)

    lvm_mock.create_snapshot.reset_mock()
    lvm_mock.extend.reset_mock()
    # b exists as a snapshot of a (and is inactive): ok, and activated for its export.
    code, out, _ = main(capsys, "lv-snapshot", "--vg", "vgt", "--origin", "img-1", "--lv", "img-2")
    assert code == 0 and out["created"] is False and out["size_bytes"] == 64 * MIB
    assert changes(lvm_mock) == ["activate"]
    lvm_mock.activate.reset_mock()
    code, _, err = main(capsys, "lv-snapshot", "--vg", "vgt", "--origin", "img-2", "--lv", "img-1")
    assert code == 1 and "an LV of its own" in err
    code, _, err = main(capsys, "lv-snapshot", "--vg", "vgt", "--origin", "img-98", "--lv",
                        "img-12")
    assert code == 1 and "vgt/img-98 does not exist" in err
    code, _, err = main(capsys, "lv-snapshot", "--vg", "vgt", "--origin", "img-1", "--lv", "img-12",
                        "--max-fill", "5")
    assert code == 1 and "too full" in err
    assert changes(lvm_mock) == []


def test_lv_resize(capsys, lvm_mock):
    assert main(capsys, "lv-resize", "--vg", "vgt", "--lv", "img-1", "--size-mib", "64")[1][
        "resized"] is False
    assert main(capsys, "lv-resize", "--vg", "vgt", "--lv", "img-1", "--size-mib", "62")[1][
        "resized"] is False  # rounds up to the same 64 MiB
    code, _, err = main(capsys, "lv-resize", "--vg", "vgt", "--lv", "img-1", "--size-mib", "32")
    assert code == 1 and "shrinking" in err
    assert changes(lvm_mock) == []
    assert main(capsys, "lv-resize", "--vg", "vgt", "--lv", "img-1", "--size-mib", "65")[1] == {
        "vg": "vgt", "lv": "img-1", "path": "/dev/vgt/img-1", "size_bytes": 68 * MIB,
        "resized": True}


def test_lv_remove(capsys, lvm_mock, mocker):
    users = mocker.patch.object(lio, "users_of_device", return_value=[])
    assert main(capsys, "lv-remove", "--vg", "vgt", "--lv", "img-99")[1] == {
        "vg": "vgt", "lv": "img-99", "removed": False}
    code, _, err = main(capsys, "lv-remove", "--vg", "vgt", "--lv", "img-1", "--require-tag",
                        "tm_iscsi.x=1")
    assert code == 1 and "does not carry tag tm_iscsi.x=1" in err
    code, _, err = main(capsys, "lv-remove", "--vg", "vgt", "--lv", "tpool")
    assert code == 2 and "LV 'tpool' is not tm_iscsi's" in err
    users.return_value = [("vgt.img-1", ["iqn.2026-11.io.tm-iscsi:vgt.img-1"])]
    code, _, err = main(capsys, "lv-remove", "--vg", "vgt", "--lv", "img-1")
    assert code == 1 and "iqn.2026-11.io.tm-iscsi:vgt.img-1" in err and "unexport" in err
    users.assert_called_with("/dev/vgt/img-1", "vgt.img-1")
    assert changes(lvm_mock) == []
    users.return_value = []
    assert main(capsys, "lv-remove", "--vg", "vgt", "--lv", "img-1", "--require-tag",
                "tm_iscsi")[1]["removed"] is True
    lvm_mock.remove.assert_called_once_with("vgt", "img-1")


def test_lv_info_and_list(capsys, lvm_mock):
    assert main(capsys, "lv-info", "--vg", "vgt", "--lv", "img-2")[1] == {
        "vg": "vgt", "lv": "img-2", "exists": True, "size_bytes": 64 * MIB, "origin": "img-1",
        "tags": ["tm_iscsi", "tm_iscsi.x=1"], "active": False, "path": "/dev/vgt/img-2",
        "data_percent": 0.01}
    assert main(capsys, "lv-info", "--vg", "vgt", "--lv", "img-97")[1]["exists"] is False
    assert main(capsys, "lv-list", "--vg", "vgt", "--tag", "tm_iscsi.x=1")[1] == {
        "vg": "vgt", "lvs": [{"lv": "img-2", "size_bytes": 64 * MIB, "origin": "img-1",
                              "tags": ["tm_iscsi", "tm_iscsi.x=1"]}]}
    assert [r["lv"] for r in main(capsys, "lv-list", "--vg", "vgt")[1]["lvs"]] == [
        "img-1", "img-2", "img-50"]


def test_export_unexport_fence(capsys, lvm_mock, mocker):
    export = mocker.patch.object(lio, "export", return_value={"iqn": "x"})
    save = mocker.patch.object(lio, "save_config", return_value=True)
    # /dev/vgt/img-2 does not exist here: the LV is looked up and activated first.
    code, out, _ = main(capsys, "export", "--vg", "vgt", "--lv", "img-2", "--initiator",
                        "iqn.2026-11.lab.tm-iscsi:host1", "--readonly", "--chap-user", "u",
                        stdin="p4ssw0rd-long\n")
    assert code == 0 and out == {"iqn": "x"}
    lvm_mock.activate.assert_called_once_with("vgt", "img-2")
    export.assert_called_once_with(
        naming.target_iqn("vgt", "img-2"), "vgt.img-2", "/dev/vgt/img-2",
        naming.lun_serial("vgt", "img-2"),
        "iqn.2026-11.lab.tm-iscsi:host1", portal_ip="0.0.0.0", port=3260,
        chap=("u", "p4ssw0rd-long"), readonly=True)
    save.assert_called_once()
    code, _, err = main(capsys, "export", "--vg", "vgt", "--lv", "img-2", "--initiator",
                        "iqn.2026-11.lab.tm-iscsi:host1", "--chap-user", "u", stdin="")
    assert code == 1 and "first line of stdin" in err
    code, _, err = main(capsys, "export", "--vg", "vgt", "--lv", "img-2", "--initiator",
                        "iqn.2026-11.lab.tm-iscsi:host1", "--chap-user", "u",
                        stdin="has blank\n")
    assert code == 1 and "printable" in err and "has blank" not in err
    code, _, err = main(capsys, "export", "--vg", "vgt", "--lv", "img-98", "--initiator",
                        "iqn.2026-11.lab.tm-iscsi:host1")
    assert code == 1 and "does not exist" in err
    assert export.call_count == 1

    unexport = mocker.patch.object(lio, "unexport", return_value=(True, []))
    assert main(capsys, "unexport", "--vg", "vgt", "--lv", "img-2", "--iqn-base",
                "iqn.2026-12.org.example")[1] == {
        "iqn": "iqn.2026-12.org.example:vgt.img-2", "removed_target": True, "initiators": []}
    unexport.assert_called_once_with("iqn.2026-12.org.example:vgt.img-2", "vgt.img-2", None)

    mocker.patch.object(lio, "targets_with_initiator", return_value=["t1", "t2"])
    remove_acl = mocker.patch.object(lio, "remove_acl", side_effect=[True, False])
    save.reset_mock()
    assert main(capsys, "fence", "--initiator", "iqn.2026-11.lab.tm-iscsi:host1")[1] == {
        "initiator": "iqn.2026-11.lab.tm-iscsi:host1", "targets": ["t1"]}
    assert remove_acl.call_count == 2 and save.called


def test_copy_into_sparse_limits_and_length(tmp_path):
    dev = tmp_path / "dev"
    dev.write_bytes(b"")
    os.truncate(dev, 16 * MIB)
    data = b"\1" * MIB + bytes(8 * MIB) + b"\2" * MIB
    n = cmd_storage._copy_into(io.BytesIO(data), str(dev), 16 * MIB, "w", sparse=True)
    assert n == len(data)
    assert dev.read_bytes()[:len(data)] == data
    # The zero chunks were skipped: the file stays sparse.
    assert os.stat(dev).st_blocks * 512 < 8 * MIB

    with pytest.raises(NodeError, match="larger than the LV"):
        cmd_storage._copy_into(io.BytesIO(bytes(17 * MIB)), str(dev), 16 * MIB, "w")
    with pytest.raises(NodeError, match="cut short"):
        cmd_storage._copy_into(io.BytesIO(b"x" * 10), str(dev), 16 * MIB, "w", expected=20)
    with pytest.raises(NodeError, match="longer than"):
        cmd_storage._copy_into(io.BytesIO(b"x" * 5 * MIB), str(dev), 16 * MIB, "w",
                               expected=MIB)


def test_progress_lines(capsys):
    progress = cmd_storage._Progress("up", 100 * MIB)
    for done in range(0, 101 * MIB, MIB):
        progress.update(done)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 20 and lines[0] == "INFO: up: 5% (5 MiB)" and lines[-1].startswith(
        "INFO: up: 100%")


def test_mkfs_argv():
    assert cmd_storage.mkfs_argv("ext4", "/dev/v/l") == ["mkfs.ext4", "-q", "-F", "/dev/v/l"]
    assert cmd_storage.mkfs_argv("swap", "/dev/v/l") == ["mkswap", "-f", "/dev/v/l"]
    assert cmd_storage.mkfs_argv("xfs", "/dev/v/l") == ["mkfs.xfs", "-q", "-f", "/dev/v/l"]


# -- LIO saved config --------------------------------------------------------------------------

class FakeRoot:
    def __init__(self, state):
        self.state = state

    def dump(self):
        return self.state


def test_save_config_is_atomic_and_only_when_changed(tmp_path, mocker):
    path = tmp_path / "target" / "saveconfig.json"
    state = {"storage_objects": [], "targets": [{"wwn": "iqn.x"}], "fabric_modules": []}
    mocker.patch.object(lio, "_root", return_value=FakeRoot(state))
    (tmp_path / "target").mkdir()
    stale = tmp_path / "target" / ".saveconfig.tm_iscsi.abc.tmp"
    stale.write_text("half")
    replace = mocker.spy(os, "replace")
    assert lio.save_config(str(path)) is True
    assert json.loads(path.read_text()) == state
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert replace.call_count == 1 and replace.call_args.args[1] == str(path)
    assert sorted(os.listdir(tmp_path / "target")) == ["saveconfig.json"]
    # Same live state: the file is left as it is.
    assert lio.save_config(str(path)) is False and replace.call_count == 1
    state["targets"] = []
    assert lio.save_config(str(path)) is True
    assert json.loads(path.read_text())["targets"] == []


class FakeLio:
    def __init__(self, state):
        self.state = state

    def dump(self):
        return dict(self.state)


def test_save_config_with_changed_refreshes_only_those_entries(tmp_path, mocker):
    path = tmp_path / "saveconfig.json"
    other = {"wwn": "iqn.other", "fabric": "iscsi", "tpgs": ["as saved"]}
    gone = {"wwn": "iqn.gone", "fabric": "iscsi", "tpgs": []}
    path.write_text(json.dumps({"fabric_modules": [], "targets": [other, gone],
                                "storage_objects": [{"plugin": "block", "name": "gone"},
                                                    {"plugin": "block", "name": "kept"}]}))
    live = {"iqn.new": FakeLio({"wwn": "iqn.new", "fabric": "iscsi", "tpgs": ["live"]})}
    mocker.patch.object(lio, "find_target", side_effect=live.get)
    mocker.patch.object(lio, "find_backstore", side_effect={
        "new": FakeLio({"plugin": "block", "name": "new"})}.get)
    full = mocker.patch.object(lio, "_root")
    changed = lio.Changed()
    changed.add("iqn.new", "new")
    changed.add("iqn.gone", "gone")
    assert lio.save_config(str(path), changed=changed) is True
    saved = json.loads(path.read_text())
    # The rest of the file is kept as it was saved (never read from configfs); the changed
    # entries are their live state, or gone with the object.
    assert saved["targets"] == [other, {"wwn": "iqn.new", "fabric": "iscsi", "tpgs": ["live"]}]
    assert saved["storage_objects"] == [{"plugin": "block", "name": "kept"},
                                        {"plugin": "block", "name": "new"}]
    assert not full.called
    # Nothing different: the file is left alone.
    mtime = os.stat(path).st_mtime_ns
    assert lio.save_config(str(path), changed=changed) is False
    assert os.stat(path).st_mtime_ns == mtime


def test_save_config_with_changed_but_no_readable_file_dumps_everything(tmp_path, mocker):
    path = tmp_path / "saveconfig.json"
    path.write_text("{half")
    state = {"storage_objects": [], "targets": [{"wwn": "iqn.x"}], "fabric_modules": []}
    mocker.patch.object(lio, "_root", return_value=FakeRoot(state))
    changed = lio.Changed()
    changed.add("iqn.x")
    assert lio.save_config(str(path), changed=changed) is True
    assert json.loads(path.read_text()) == state


# -- host --------------------------------------------------------------------------------------

def test_replace_symlink(tmp_path):
    link = tmp_path / "42" / "disk.0"
    cmd_host.replace_symlink(str(link), "/dev/sdb")
    assert os.readlink(link) == "/dev/sdb"
    cmd_host.replace_symlink(str(link), "/dev/sdc")
    assert os.readlink(link) == "/dev/sdc"
    assert os.listdir(link.parent) == ["disk.0"]
    (tmp_path / "dir").mkdir()
    with pytest.raises(NodeError, match="directory"):
        cmd_host.replace_symlink(str(tmp_path / "dir"), "/dev/sdb")


def test_link_verdict(tmp_path):
    iqn = "iqn.2026-11.io.tm-iscsi:vg.a"
    disks = [iscsi.Disk(0, "sdb", "2:0:0:0")]
    link = tmp_path / "disk.0"
    assert cmd_host._link_verdict(str(link), iqn, disks) == (False, None)
    os.symlink(f"/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-{iqn}-lun-0", link)
    assert cmd_host._link_verdict(str(link), iqn, disks) == (True, None)
    link.unlink()
    os.symlink("/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn.2026-11.io.tm-iscsi:vg.b-lun-0",
               link)
    remove, note = cmd_host._link_verdict(str(link), iqn, disks)
    assert remove is False and "not to a LUN of" in note
    link.unlink()
    link.write_text("a file")
    assert cmd_host._link_verdict(str(link), iqn, disks) == (
        False, f"{link} is not a symlink; left in place")


IQN = "iqn.2026-11.io.tm-iscsi:vg.a"


def session(sid=5, lun=0, disk="sdb", state="LOGGED_IN"):
    disks = [iscsi.Disk(lun, disk, "2:0:0:0")] if disk else []
    return iscsi.Session(sid, IQN, "10.0.0.1", 3260, state, disks)


@pytest.fixture
def host(mocker):
    m = mocker.MagicMock()
    for name in ("write_record", "login", "logout_session", "delete_records", "rescan_session",
                 "rescan_disk", "delete_disk", "flush"):
        setattr(m, name, mocker.patch.object(iscsi, name))
    m.sessions_of = mocker.patch.object(iscsi, "sessions_of", return_value=[])
    m.unit_serial = mocker.patch.object(iscsi, "unit_serial", return_value="S1")
    m.holders = mocker.patch.object(iscsi, "holders", return_value=[])
    mocker.patch.object(iscsi, "mounted", return_value=False)
    mocker.patch.object(iscsi, "initiator_name", return_value="iqn.2026-11.lab.tm-iscsi:host1")
    mocker.patch.object(targets, "BY_PATH_WAIT", 0)
    return m


def attach_argv(*extra):
    return ["attach", "--portal", "10.0.0.1", "--iqn", IQN, "--serial", "S1", *extra]


def test_attach_new_session(capsys, host, tmp_path):
    host.sessions_of.side_effect = [[], [session()]]
    link = str(tmp_path / "disk.0")
    code, out, _ = main(capsys, *attach_argv("--link", link, "--timeout", "10",
                                             "--chap-user", "u"), stdin="pw!%^\nrest\n")
    assert code == 0 and out == {"device": "/dev/sdb", "stable_path": "/dev/sdb", "link": link,
                                 "session_reused": False}
    host.write_record.assert_called_once_with(IQN, "10.0.0.1", 3260, ("u", "pw!%^"), 5, 2)
    assert os.readlink(link) == "/dev/sdb"


def test_attach_reuses_the_session(capsys, host):
    host.sessions_of.return_value = [session()]
    code, out, _ = main(capsys, *attach_argv())
    assert out["session_reused"] is True
    assert not host.write_record.called and not host.login.called


def test_attach_refused_login_leaves_nothing(capsys, host):
    host.login.side_effect = NodeError("refused: authorization failure")
    code, out, err = main(capsys, *attach_argv())
    assert code == 1 and "authorization" in err
    host.delete_records.assert_called_once_with(IQN)


def test_attach_wrong_serial(capsys, host, tmp_path):
    link = str(tmp_path / "disk.0")
    # New session: refused, and the session it made is undone.
    host.sessions_of.side_effect = [[], [session()], [session()]]
    host.unit_serial.return_value = "OTHER"
    code, _, err = main(capsys, *attach_argv("--link", link))
    assert code == 1 and "/dev/sdb with unit serial OTHER, expected S1" in err
    host.logout_session.assert_called_once_with(5)
    host.delete_records.assert_called_once_with(IQN)
    assert not os.path.lexists(link)
    # Reused session: the disk is rescanned (its serial is cached), then refused; the session
    # stays.
    host.sessions_of.side_effect = None
    host.sessions_of.return_value = [session()]
    host.logout_session.reset_mock()
    code, _, err = main(capsys, *attach_argv("--link", link))
    assert code == 1 and host.rescan_disk.called and not host.logout_session.called


def test_attach_waits_for_a_late_lun_and_rescans(capsys, host, mocker):
    mocker.patch.object(targets, "POLL", 0.01)
    host.sessions_of.side_effect = [[session(disk=None)]] * 4 + [[session()]]
    code, out, _ = main(capsys, *attach_argv())
    assert code == 0 and host.rescan_session.called


def test_attach_times_out_when_the_lun_never_comes(capsys, host, mocker):
    mocker.patch.object(targets, "POLL", 0.05)
    host.sessions_of.side_effect = None
    host.sessions_of.return_value = [session(disk=None)]
    code, _, err = main(capsys, *attach_argv("--timeout", "1"))
    assert code == 1 and "did not appear" in err


def test_detach(capsys, host, tmp_path):
    link = tmp_path / "disk.0"
    os.symlink("/dev/sdb", link)
    host.sessions_of.return_value = [session()]
    host.holders.return_value = ["dm-2 (cache)"]
    code, _, err = main(capsys, "detach", "--portal", "storage", "--iqn", IQN,
                        "--link", str(link))
    assert code == 1 and "in use by dm-2 (cache)" in err
    assert os.path.islink(link) and not host.flush.called and not host.logout_session.called

    host.holders.return_value = []
    code, out, _ = main(capsys, "detach", "--portal", "storage", "--iqn", IQN,
                        "--link", str(link))
    assert out == {"logged_out": True, "link_removed": True, "link_note": None}
    host.flush.assert_called_once_with("/dev/sdb")
    host.delete_disk.assert_called_once_with("sdb")
    host.logout_session.assert_called_once_with(5)
    host.delete_records.assert_called_once_with(IQN)


def test_detach_failed_session_skips_the_flush(capsys, host):
    host.sessions_of.return_value = [session(state="FAILED")]
    code, out, _ = main(capsys, "detach", "--portal", "storage", "--iqn", IQN)
    assert out["logged_out"] is True
    assert not host.flush.called and not host.delete_disk.called
    host.logout_session.assert_called_once_with(5)


def test_dead_upload_spools_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(cmd_storage, "SPOOL_DIR", str(tmp_path))
    dead = tmp_path / "tm_iscsi-upload-999999999-abc.qcow2"
    alive = tmp_path / f"tm_iscsi-upload-{os.getpid()}-def.qcow2"
    other = tmp_path / "someone-else.qcow2"
    for f in (dead, alive, other):
        f.write_text("x")
    cmd_storage._remove_dead_spools()
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, other.name])


def test_command_table_names_the_module_that_registers_each_command():
    cli.build_parser(["--help"])  # an unknown word loads every module
    registered = {name: func.__module__.rsplit(".", 1)[1]
                  for name, (func, _) in cli._COMMANDS.items()}
    assert registered == cli.MODULE_OF


def test_a_command_imports_only_its_own_module():
    import subprocess
    import sys
    code = ("import sys; from tm_iscsi.node import cli; cli.build_parser(['initiator']); "
            "print(sorted(m for m in sys.modules if '.cmd_' in m or m.startswith('dmcache')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__))))).stdout
    assert out.strip() == "['tm_iscsi.node.cmd_host']"


# -- confinement: the helper does the driver's job and refuses everything else ----------------

@pytest.mark.parametrize("argv", [
    ["lv-remove", "--vg", "othervg", "--lv", "img-50"],
    ["lv-read", "--vg", "othervg", "--lv", "img-50"],
    ["export", "--vg", "fd", "--lv", "0", "--initiator", "iqn.2026-11.lab.tm-iscsi:host2"],
    ["export", "--vg", "mapper", "--lv", "vgt-tpool_tdata", "--initiator",
     "iqn.2026-11.lab.tm-iscsi:host2"],
    ["lv-tag", "--vg", "cpu", "--lv", "0", "--add", "x"],
    ["pool-ensure", "--vg", "root-vg"],
])
def test_a_vg_that_is_not_the_node_s_is_refused_before_lvm_is_asked(capsys, lvm_mock, argv):
    code, out, err = main(capsys, *argv)
    assert code == 2 and out is None
    assert "is not one of this node's tm_iscsi VGs" in err and "VG_NAME" in err
    assert len(err.strip().splitlines()) == 1
    assert not lvm_mock.report.called and changes(lvm_mock) == []


@pytest.mark.parametrize("argv, verb", [
    (["lv-remove", "--vg", "vgt", "--lv", "img-50"], "remove"),
    (["lv-read", "--vg", "vgt", "--lv", "img-50"], "read"),
    (["lv-write", "--vg", "vgt", "--lv", "img-50"], "write"),
    (["lv-resize", "--vg", "vgt", "--lv", "img-50", "--size-mib", "128"], "resize"),
    (["lv-mkfs", "--vg", "vgt", "--lv", "img-50", "--fs", "ext4"], "format"),
    (["lv-tag", "--vg", "vgt", "--lv", "img-50", "--add", "tm_iscsi"], "tag"),
    (["lv-snapshot", "--vg", "vgt", "--origin", "img-50", "--lv", "img-5"], "snapshot"),
    (["lv-copy", "--vg", "vgt", "--src", "img-50", "--dst", "img-1"], "copy"),
    (["lv-copy", "--vg", "vgt", "--src", "img-1", "--dst", "img-50"], "overwrite"),
    (["export", "--vg", "vgt", "--lv", "img-50", "--initiator",
      "iqn.2026-11.lab.tm-iscsi:host2"], "export"),
])
def test_an_lv_that_is_not_tm_iscsi_s_is_refused(capsys, lvm_mock, mocker, argv, verb):
    export = mocker.patch.object(lio, "export")
    code, out, err = main(capsys, *argv, stdin=None)
    assert code == 1 and out is None
    assert f"is not tm_iscsi's (it has no tm_iscsi tag); refusing to {verb} it" in err
    assert changes(lvm_mock) == [] and not export.called


def test_new_lvs_only_under_tm_iscsi_s_names_and_the_owner_tag_stays(capsys, lvm_mock):
    code, _, err = main(capsys, "lv-create", "--vg", "vgt", "--lv", "evil", "--size-mib", "1")
    assert code == 2 and "its LVs are named img-N or vm-N-disk-N" in err
    code, _, err = main(capsys, "lv-snapshot", "--vg", "vgt", "--origin", "img-1", "--lv", "root")
    assert code == 2 and "LV 'root' is not tm_iscsi's" in err
    code, _, err = main(capsys, "lv-tag", "--vg", "vgt", "--lv", "img-1", "--delete", "tm_iscsi")
    assert code == 1 and "never removed" in err
    assert changes(lvm_mock) == []


def test_without_node_conf_only_tm_iscsi_s_default_vg_names(capsys, lvm_mock, node_conf):
    node_conf.write_text("ROLES=storage\n")
    code, _, err = main(capsys, "lv-info", "--vg", "vgt", "--lv", "img-1")
    assert code == 2 and "only vg-one-<datastore id>" in err
    code, out, _ = main(capsys, "lv-info", "--vg", "vg-one-100", "--lv", "img-1")
    assert code == 0


def test_lio_saved_acls_reads_the_file_restored_at_boot(tmp_path):
    saved = tmp_path / "saveconfig.json"
    assert lio.saved_acls(str(saved)) == {"exists": False, "readable": False, "targets": None}
    saved.write_text(json.dumps({"targets": [{"wwn": "iqn.x:a", "tpgs": [
        {"node_acls": [{"node_wwn": "iqn.h:2"}, {"node_wwn": "iqn.h:1"}]}]}]}))
    assert lio.saved_acls(str(saved)) == {"exists": True, "readable": True,
                                          "targets": {"iqn.x:a": ["iqn.h:1", "iqn.h:2"]}}


def test_every_command_turns_its_environment_s_failures_into_one_line():
    """A vanished device, a full disk, a configfs write LIO refuses: one NodeError line from
    every command (run.one_line_errors), never a traceback."""
    import importlib
    for module in set(cli.MODULE_OF.values()):
        importlib.import_module(f"tm_iscsi.node.{module}")
    unwrapped = [name for name, (func, _) in cli._COMMANDS.items()
                 if not hasattr(func, "__wrapped__")]
    assert unwrapped == []
