"""iSCSI names and portals, the sysfs walk from session to disk (on a fake tree laid out like the
lab kernel's), the unit serial page, and iscsiadm argv / exit-code handling."""
import os

import pytest

from tm_iscsi.node import iscsi
from tm_iscsi.node import run as run_mod
from tm_iscsi.node.errors import NodeError

IQN = "iqn.2026-11.io.tm-iscsi:vg-one-100.img-1"
SERIAL = "6f1c3a52-7d0e-4f55-9a1e-2b8e4c1d9a07"


def vpd80(serial):
    data = serial.encode() + b"\0"
    return bytes([0, 0x80, 0, len(data)]) + data


def fake_session(sysfs, sid, host, iqn, ip, port, luns, state="LOGGED_IN"):
    """/sys as the 6.1 kernel lays out an iSCSI session (see the lab notes)."""
    devdir = sysfs / "devices" / "platform" / f"host{host}" / f"session{sid}"
    sdir = devdir / "iscsi_session" / f"session{sid}"
    sdir.mkdir(parents=True)
    (sdir / "targetname").write_text(iqn + "\n")
    (sdir / "state").write_text(state + "\n")
    os.symlink(devdir, sdir / "device")
    cls = sysfs / "class" / "iscsi_session"
    cls.mkdir(parents=True, exist_ok=True)
    os.symlink(sdir, cls / f"session{sid}")
    conn = devdir / f"connection{sid}:0" / "iscsi_connection" / f"connection{sid}:0"
    conn.mkdir(parents=True)
    (conn / "persistent_address").write_text(ip + "\n")
    (conn / "persistent_port").write_text(f"{port}\n")
    for lun, disk, serial in luns:
        sdev = devdir / f"target{host}:0:0" / f"{host}:0:0:{lun}"
        (sdev / "block" / disk).mkdir(parents=True)
        (sdev / "vpd_pg80").write_bytes(vpd80(serial))
        blk = sysfs / "block" / disk
        blk.mkdir(parents=True)
        os.symlink(sdev, blk / "device")
        (blk / "holders").mkdir()


@pytest.fixture
def sysfs(tmp_path):
    root = tmp_path / "sys"
    fake_session(root, 3, 2, IQN, "10.213.77.10", 3260, [(0, "sdb", SERIAL)])
    fake_session(root, 4, 3, "iqn.2026-11.io.tm-iscsi:vg.other", "10.213.77.10", 3260, [],
                 state="FAILED")
    return root


def test_sessions_from_sysfs(sysfs):
    found = iscsi.sessions(str(sysfs))
    assert [(s.sid, s.iqn, s.ip, s.port, s.state) for s in found] == [
        (3, IQN, "10.213.77.10", 3260, "LOGGED_IN"),
        (4, "iqn.2026-11.io.tm-iscsi:vg.other", "10.213.77.10", 3260, "FAILED")]
    session = found[0]
    assert session.portal == "10.213.77.10:3260"
    disk = session.disk(0)
    assert (disk.name, disk.device, disk.hctl) == ("sdb", "/dev/sdb", "2:0:0:0")
    assert session.disk(1) is None
    assert [s.sid for s in iscsi.sessions_of(IQN, str(sysfs))] == [3]


def test_no_iscsi_at_all(tmp_path):
    assert iscsi.sessions(str(tmp_path)) == []


def test_unit_serial_and_holders(sysfs):
    assert iscsi.unit_serial("sdb", str(sysfs)) == SERIAL
    assert iscsi.unit_serial("sdz", str(sysfs)) is None
    assert iscsi.holders("sdb", str(sysfs)) == []
    (sysfs / "block" / "sdb" / "holders" / "dm-3").mkdir()
    (sysfs / "block" / "dm-3" / "dm").mkdir(parents=True)
    (sysfs / "block" / "dm-3" / "dm" / "name").write_text("cache-img-7\n")
    assert iscsi.holders("sdb", str(sysfs)) == ["dm-3 (cache-img-7)"]


def test_parse_vpd_pg80():
    assert iscsi.parse_vpd_pg80(vpd80(SERIAL)) == SERIAL
    assert iscsi.parse_vpd_pg80(bytes([0, 0x80, 0, 6]) + b"abc   ") == "abc"
    assert iscsi.parse_vpd_pg80(b"") is None
    assert iscsi.parse_vpd_pg80(bytes([0, 0x83, 0, 1, 65])) is None


def test_delete_and_rescan_write_sysfs(sysfs):
    device = sysfs / "block" / "sdb" / "device"
    (device / "delete").write_text("")
    (device / "rescan").write_text("")
    iscsi.rescan_disk("sdb", str(sysfs))
    iscsi.delete_disk("sdb", str(sysfs))
    assert (device / "delete").read_text() == "1"
    assert (device / "rescan").read_text() == "1"
    iscsi.delete_disk("sdz", str(sysfs))  # already gone: nothing to do


@pytest.mark.parametrize("name,ok", [
    ("iqn.2026-11.lab.tm-iscsi:host1", True), (IQN, True), ("iqn.2003-01.org.linux-iscsi.x", True),
    ("eui.0123456789abcdef", True), ("naa.60014056f1c3a527", True),
    ("iqn.2026-11.x:a;reboot", False), ("iqn.2026-11.x:a b", False), ("iqn.26-11.x", False),
    ("iqn.2026-11.x:$(id)", False), ("host1", False), ("", False), ("iqn.2026-11.x:" + "a" * 300,
                                                                      False)])
def test_valid_iqn(name, ok):
    assert iscsi.valid_iqn(name) is ok


@pytest.mark.parametrize("text,expected", [
    ("storage", ("storage", 3260)), ("storage:3261", ("storage", 3261)),
    ("10.0.0.1", ("10.0.0.1", 3260)), ("10.0.0.1:3260", ("10.0.0.1", 3260)),
    ("[fd00::1]:3260", ("fd00::1", 3260)), ("[fd00::1]", ("fd00::1", 3260))])
def test_parse_portal(text, expected):
    assert iscsi.parse_portal(text) == expected


@pytest.mark.parametrize("text", ["storage:x", "storage:0", "storage:70000", "a;b", "-oProxy",
                                  "[zz::1]:3260", "a:b:c", ""])
def test_parse_portal_rejects(text):
    with pytest.raises(ValueError):
        iscsi.parse_portal(text)


def test_resolve():
    assert iscsi.resolve("10.0.0.1") == "10.0.0.1"
    assert iscsi.resolve("localhost") in ("127.0.0.1", "::1")
    with pytest.raises(NodeError, match="cannot resolve the storage node"):
        iscsi.resolve("no-such-host.invalid")


def test_initiator_name(tmp_path):
    path = tmp_path / "initiatorname.iscsi"
    path.write_text("## comment\nInitiatorName=iqn.2026-11.lab.tm-iscsi:host1\n")
    assert iscsi.initiator_name(str(path)) == "iqn.2026-11.lab.tm-iscsi:host1"
    path.write_text("# nothing\n")
    with pytest.raises(NodeError, match="no InitiatorName"):
        iscsi.initiator_name(str(path))
    with pytest.raises(NodeError, match="cannot read"):
        iscsi.initiator_name(str(tmp_path / "missing"))


def test_record_argv_and_settings():
    assert iscsi.create_record_argv(IQN, "10.0.0.1", 3260) == [
        "iscsiadm", "-m", "node", "-T", IQN, "-p", "10.0.0.1:3260", "-o", "new"]
    settings = dict(iscsi.record_settings(("u", "p"), login_timeout=5, login_attempts=3))
    assert settings["node.startup"] == "manual"
    assert settings["node.session.auth.authmethod"] == "CHAP"
    # The secret never goes into iscsiadm's argv: a placeholder there, the file gets the secret.
    assert settings["node.session.auth.password"] == iscsi.SECRET_PLACEHOLDER
    assert settings["node.conn[0].timeo.login_timeout"] == "5"
    assert settings["node.session.initial_login_retry_max"] == "3"
    assert dict(iscsi.record_settings())["node.session.auth.authmethod"] == "None"
    argv = iscsi.update_record_argv(IQN, "fd00::1", 3260, [("a", "1"), ("b", "2")])
    assert argv[6:] == ["[fd00::1]:3260", "-o", "update", "-n", "a", "-v", "1", "-n", "b",
                        "-v", "2"]


def result(code, stderr=""):
    return run_mod.Result(["iscsiadm"], code, "", stderr, 0.1)


def test_login_exit_codes(mocker):
    run = mocker.patch.object(run_mod, "run", return_value=result(0))
    iscsi.login(IQN, "10.0.0.1", 3260, timeout=30)
    assert run.call_args.args[0][-1] == "--login"
    run.return_value = result(iscsi.ERR_SESS_EXISTS)
    iscsi.login(IQN, "10.0.0.1", 3260, timeout=30)
    run.return_value = result(iscsi.ERR_LOGIN_AUTH_FAILED, "iscsiadm: initiator reported error "
                                                           "(24 - authorization failure)")
    with pytest.raises(NodeError, match="refused the login of iqn.x:h1 .*no ACL"):
        iscsi.login(IQN, "10.0.0.1", 3260, timeout=30, initiator="iqn.x:h1")
    run.return_value = result(iscsi.ERR_TRANS_TIMEOUT)
    with pytest.raises(NodeError, match="timed out"):
        iscsi.login(IQN, "10.0.0.1", 3260, timeout=30)
    run.return_value = result(19, "iscsiadm: something odd")
    with pytest.raises(NodeError, match="something odd"):
        iscsi.login(IQN, "10.0.0.1", 3260, timeout=30)


def test_logout_and_delete_accept_nothing_there(mocker):
    run = mocker.patch.object(run_mod, "run", return_value=result(iscsi.ERR_NO_OBJS_FOUND))
    iscsi.logout_session(7)
    iscsi.delete_records(IQN)
    assert run.call_args_list[0].args[0] == ["iscsiadm", "-m", "session", "-r", "7", "--logout"]
    assert run.call_args_list[1].args[0] == ["iscsiadm", "-m", "node", "-T", IQN, "-o",
                                             "delete"]
    run.return_value = result(3, "iscsiadm: internal error")
    with pytest.raises(NodeError, match="internal error"):
        iscsi.logout_session(7)


def test_the_chap_secret_goes_into_the_record_file_not_iscsiadm_s_argv(tmp_path, monkeypatch):
    monkeypatch.setattr(iscsi, "NODES_DIR", str(tmp_path))
    record = tmp_path / "iqn.2026-11.x:vg.lv" / "10.0.0.1,3260,1"
    record.mkdir(parents=True)
    (record / "default").write_text("# BEGIN RECORD 2.1.8\nnode.name = iqn.2026-11.x:vg.lv\n"
                                    "node.session.auth.authmethod = CHAP\n"
                                    f"node.session.auth.password = {iscsi.SECRET_PLACEHOLDER}\n"
                                    "# END RECORD\n")
    calls = []
    monkeypatch.setattr(iscsi._run, "run", lambda argv, **kw: calls.append(argv))
    iscsi.write_record("iqn.2026-11.x:vg.lv", "10.0.0.1", 3260, chap=("u", "s3cr3t-chap!"))
    assert all("s3cr3t-chap!" not in " ".join(argv) for argv in calls)
    text = (record / "default").read_text()
    assert "node.session.auth.password = s3cr3t-chap!\n" in text
    assert text.startswith("# BEGIN RECORD 2.1.8\n") and text.endswith("# END RECORD\n")
    assert (record / "default").stat().st_mode & 0o777 == 0o600
    # No record file where iscsiadm should have made one: one line, nothing written.
    with pytest.raises(NodeError, match="no record file"):
        iscsi.write_record("iqn.2026-11.x:vg.other", "10.0.0.1", 3260, chap=("u", "s"))


def test_a_record_made_with_o_new_is_a_flat_file_without_portal_group(tmp_path, monkeypatch):
    """What open-iscsi 2.1 (Debian 12) writes for `-o new`: <nodes>/<iqn>/<ip>,<port>."""
    monkeypatch.setattr(iscsi, "NODES_DIR", str(tmp_path))
    (tmp_path / "iqn.2026-11.x:vg.lv").mkdir()
    record = tmp_path / "iqn.2026-11.x:vg.lv" / "10.0.0.1,3260"
    record.write_text(f"node.session.auth.password = {iscsi.SECRET_PLACEHOLDER}\n")
    monkeypatch.setattr(iscsi._run, "run", lambda argv, **kw: None)
    iscsi.write_record("iqn.2026-11.x:vg.lv", "10.0.0.1", 3260, chap=("u", "s3cr3t-chap!"))
    assert record.read_text() == "node.session.auth.password = s3cr3t-chap!\n"
