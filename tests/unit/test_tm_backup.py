"""prebackup / postbackup with the nodes replaced by a recorder (tests/unit/test_tm_actions.py's
world, fed the VM oned 7.4 sent in fixture 28): four node calls whatever the number of disks, in
the order that makes the point consistent; the chain's bookkeeping (which point is made, which
the increment is computed against, which are kept); and every refusal before any node call.
The bytes are proven in tests/lab/test_backup.py."""
import base64
import json
import xml.etree.ElementTree as ET

import pytest

from tm_iscsi import protocol, settings as settings_mod
from tm_iscsi.context import ActionContext
from tm_iscsi.one.objects import Datastore, VirtualMachine
from tm_iscsi.tm import main as tm_main
from tm_iscsi.tm.backup import Plan
from harness import fixtures

from test_tm_actions import HOST1_IQN, FakeOne, RecordingNode, _ds, before_each

LINE = "host1:/var/lib/one//datastores/101/0 0:1 one-0 - 0 101"


def _vm_xml(mode=None, last=None, freeze=None, cache="read+writeback"):
    text = (fixtures.folder("28-backup-full-live") / "01-tm-prebackup_live.vm.xml").read_text()
    root = ET.fromstring(text)
    config = root.find("BACKUPS/BACKUP_CONFIG")
    for name, value in (("MODE", mode), ("LAST_INCREMENT_ID", last), ("FS_FREEZE", freeze)):
        if value is not None:
            ET.SubElement(config, name).text = str(value)
    return ET.tostring(root, encoding="unicode")


def _point(host, args):
    request = json.loads(args[1])
    return {"disks": [{
        "lv": d["lv"], "point": f"{d['lv']}-backup-{d['increment']}", "increment": d["increment"],
        "size_bytes": 64 << 20, "changed_bytes": None if d.get("since") is None else 65536,
        "ranges": None if d.get("since") is None else [[0, 65536]],
        "lun": {"iqn": f"iqn.x:{d['lv']}-backup", "serial": f"s-{d['lv']}"}}
        for d in request["disks"]]}


@pytest.fixture
def world():
    def make(vm_xml, cache="read+writeback"):
        vm = VirtualMachine.from_xml(vm_xml)
        one = FakeOne({0: vm}, {100: _ds(100, CACHE_MODE=cache),
                                101: _ds(101, VG_NAME="vg-one-100", CACHE_MODE=cache)})
        calls = []
        answers = {
            "initiator": {"iqn": HOST1_IQN},
            "backup-quiesce": {"stacks": []},
            "backup-snapshot": _point,
            "backup-write": lambda host, args: {"files": [
                {"disk_id": f["disk_id"], "file": f"disk.{f['disk_id']}.{f['increment']}",
                 "bytes_read": 1, "file_bytes": 2} for f in json.loads(args[1])["files"]]},
            "backup-release": {"disks": []},
            "path-remove": {"removed": True},
        }
        settings = settings_mod.load({"TM_ISCSI_FRONTEND": "frontend", "TM_ISCSI_CONF": "/none"})
        ctx = ActionContext(settings=settings, one=one)
        ctx.node = lambda host: RecordingNode(host, calls, answers)
        return ctx, calls
    return make


def _run(ctx, action, xml, capsys, line=LINE):
    code = tm_main.run(action, line.split(), stdin=xml, ctx=ctx)
    err = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("INFO:")]
    return code, err


def _requests(calls, command):
    return [json.loads(args[args.index("--request") + 1]) for _, c, args in calls
            if c == command]


def test_a_live_incremental_backup_is_four_node_calls_in_order(world, capsys):
    xml = _vm_xml("INCREMENT", 2, "AGENT")
    ctx, calls = world(xml)
    code, err = _run(ctx, "prebackup_live", xml, capsys)
    assert code == 0 and err == []
    assert [(h, c) for h, c, _ in calls if c != "initiator"] == [
        ("host1", "backup-quiesce"), ("storage", "backup-snapshot"),
        ("host1", "backup-write"), ("storage", "backup-release")]
    (quiesce,) = _requests(calls, "backup-quiesce")
    assert quiesce["stacks"] == ["vm-0-disk-0", "img-1"] and quiesce["freeze"] == "AGENT"
    assert quiesce["domain"] == "one-0"
    (snap,) = _requests(calls, "backup-snapshot")
    assert [(d["lv"], d["increment"], d["since"]) for d in snap["disks"]] == [
        ("vm-0-disk-0", 3, 2), ("img-1", 3, 2)]
    (write,) = _requests(calls, "backup-write")
    assert write["dir"] == "/var/lib/one/datastores/101/0/backup"
    assert write["resume"] == ["vm-0-disk-0", "img-1"] and write["thaw"] == "AGENT"
    assert [(f["disk_id"], f["increment"], f["delta"]) for f in write["files"]] == [
        (0, 3, True), (1, 3, True)]
    (release,) = _requests(calls, "backup-release")
    assert [d["keep"] for d in release["disks"]] == [[2, 3], [2, 3]]


def test_the_payload_carries_the_vm_document_and_the_changed_ranges(world, capsys):
    xml = _vm_xml("INCREMENT", 0)
    ctx, calls = world(xml)
    sent = []
    before_each(ctx, "backup-write", lambda host, args, kwargs: sent.append(kwargs["stdin"]))
    assert _run(ctx, "prebackup_live", xml, capsys)[0] == 0
    vm_xml, ranges = protocol.parse_backup_payload(sent[0])
    assert base64.b64decode(vm_xml).decode() == xml
    assert ranges == {0: [(0, 65536)], 1: [(0, 65536)]}


def test_a_full_backup_keeps_no_point_and_the_first_of_a_chain_is_whole(world, capsys):
    for mode, last, keep, delta in (("FULL", None, [], False), ("INCREMENT", -1, [0], False)):
        xml = _vm_xml(mode, last)
        ctx, calls = world(xml)
        assert _run(ctx, "prebackup", xml, capsys)[0] == 0
        (snap,) = _requests(calls, "backup-snapshot")
        assert {d.get("since") for d in snap["disks"]} == {None}
        (write,) = _requests(calls, "backup-write")
        assert {f["delta"] for f in write["files"]} == {delta}
        assert write["thaw"] == "NONE"
        (release,) = _requests(calls, "backup-release")
        assert {tuple(d["keep"]) for d in release["disks"]} == {tuple(keep)}


def test_without_write_back_and_freeze_there_is_no_quiesce(world, capsys):
    xml = _vm_xml("FULL")
    ctx, calls = world(xml, cache="none")
    assert _run(ctx, "prebackup_live", xml, capsys)[0] == 0
    assert "backup-quiesce" not in [c for _, c, _ in calls]


def test_a_failed_write_lets_the_vm_go_on_and_drops_the_new_point(world, capsys):
    xml = _vm_xml("INCREMENT", 4)
    ctx, calls = world(xml)
    node = ctx.node
    state = {"writes": 0}

    def failing(host):
        recorder = node(host)
        original = recorder.call

        def call(command, *args, **kwargs):
            if command == "backup-write":
                state["writes"] += 1
                if json.loads(args[1])["files"]:
                    original(command, *args, **kwargs)
                    from tm_iscsi.errors import DriverError
                    raise DriverError("host1: disk full")
            return original(command, *args, **kwargs)
        recorder.call = call
        return recorder
    ctx.node = failing
    code, err = _run(ctx, "prebackup_live", xml, capsys)
    assert code == 1 and err == ["prebackup_live: host1: disk full"]
    writes = _requests(calls, "backup-write")
    assert [bool(w["files"]) for w in writes] == [True, False]   # then resumed, no files
    (release,) = _requests(calls, "backup-release")
    assert [d["keep"] for d in release["disks"]] == [[4], [4]]


def test_postbackup_removes_the_backup_directory_only(world, capsys):
    xml = _vm_xml("FULL")
    ctx, calls = world(xml)
    assert _run(ctx, "postbackup_live", xml, capsys)[0] == 0
    assert calls == [("host1", "path-remove",
                      ("--path", "/var/lib/one/datastores/101/0/backup"))]


@pytest.mark.parametrize("xml, fragment", [
    ("", "VM's XML on stdin"),
    ("<VM><ID>7</ID></VM>", "VM 7, not VM 0"),
    (_vm_xml("SOMETIMES"), "MODE='SOMETIMES'"),
    (_vm_xml("INCREMENT", -5), "LAST_INCREMENT_ID=-5"),
    (_vm_xml("FULL", None, "THAW"), "FS_FREEZE='THAW'"),
    ("<!DOCTYPE x [<!ENTITY a 'b'>]><VM><ID>0</ID></VM>", "DOCTYPE"),
])
def test_bad_documents_are_one_line_and_ask_no_node(world, capsys, xml, fragment):
    ctx, calls = world(_vm_xml())
    code, err = _run(ctx, "prebackup_live", xml, capsys)
    assert code == 1 and len(err) == 1 and fragment in err[0], err
    assert calls == []


def test_a_disk_the_vm_does_not_have_is_refused_before_any_call(world, capsys):
    xml = _vm_xml("FULL")
    ctx, calls = world(xml)
    code, err = _run(ctx, "prebackup", xml, capsys,
                     line="host1:/var/lib/one//datastores/101/0 0:5 one-0 - 0 101")
    assert code == 1 and "no disk 5" in err[0] and calls == []


def test_plan_numbers_the_points():
    def plan(mode, last):
        return Plan(VirtualMachine.from_xml(_vm_xml(mode, last)))
    assert (plan(None, None).increment, plan(None, None).since) == (0, None)
    assert (plan("INCREMENT", -1).increment, plan("INCREMENT", -1).since) == (0, None)
    assert (plan("INCREMENT", 6).increment, plan("INCREMENT", 6).since) == (7, 6)
    assert plan("INCREMENT", 6).keep(True) == [6, 7] and plan("INCREMENT", 6).keep(False) == [6]
    assert plan("FULL", 6).keep(True) == [] and plan("INCREMENT", -1).keep(True) == [0]


def test_disks_on_two_storage_nodes_each_snapshot_there_and_read_from_there(world, capsys):
    root = ET.fromstring(_vm_xml("FULL"))
    disk = next(d for d in root.findall("TEMPLATE/DISK") if d.findtext("DISK_ID") == "1")
    disk.find("DATASTORE_ID").text = "105"
    disk.find("SOURCE").text = "vg-one-105/img-1"
    xml = ET.tostring(root, encoding="unicode")
    ctx, calls = world(xml)
    other = _ds(100, ISCSI_HOST="storage2", VG_NAME="vg-one-105").element
    other.find("ID").text = "105"
    ctx.one.datastores[105] = Datastore.from_xml(ET.tostring(other, encoding="unicode"))
    code, err = _run(ctx, "prebackup_live", xml, capsys)
    assert code == 0, err
    assert sorted(h for h, c, _ in calls if c == "backup-snapshot") == ["storage", "storage2"]
    (write,) = _requests(calls, "backup-write")
    assert write["portal"] == "storage"
    assert [f.get("portal") for f in write["files"]] == [None, "storage2"]
    assert sorted(h for h, c, _ in calls if c == "backup-release") == ["storage", "storage2"]
