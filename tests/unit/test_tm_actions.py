"""Front-end TM/DS actions with the nodes replaced by a recorder: which node is asked for what, in
which order, and how bad input is refused (one line, exit 1, nothing asked of any node).
Behaviour on devices is proven in tests/lab; this checks the decisions and the error paths."""
import os
import stat

import pytest

from tm_iscsi import settings as settings_mod
from tm_iscsi.context import ActionContext
from tm_iscsi.one.objects import Datastore, VirtualMachine
from tm_iscsi.one.errors import OnedNoSuchObject
from tm_iscsi.tm import main as tm_main
from tests.standin import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST1_IQN = "iqn.2026-11.lab.tm-iscsi:host1"


class RecordingNode:
    def __init__(self, host, calls, answers):
        self.host = host
        self.calls = calls
        self.answers = answers

    def call(self, command, *args, **kwargs):
        self.calls.append((self.host, command, tuple(str(a) for a in args)))
        answer = self.answers.get(command, {})
        return answer(self.host, args) if callable(answer) else dict(answer)

    stream_in = call

    def stream_out(self, command, *args, **kwargs):
        self.calls.append((self.host, command, tuple(str(a) for a in args)))


class FakeOne:
    def __init__(self, vms, datastores):
        self.vms = vms
        self.datastores = datastores

    def vm_info(self, vm_id):
        return self.vms[vm_id]

    def datastore_info(self, ds_id):
        if ds_id not in self.datastores:
            raise OnedNoSuchObject(f"[one.datastore.info] Error getting datastore [{ds_id}].")
        return self.datastores[ds_id]


def _ds(ds_id, **template):
    xml = (fixtures.folder("00-datastores") / f"ds-{ds_id}.after-monitor.xml").read_text()
    ds = Datastore.from_xml(xml)
    element = ds.element.find("TEMPLATE")
    import xml.etree.ElementTree as ET
    for name, value in template.items():
        node = element.find(name)
        if value is None:
            if node is not None:
                element.remove(node)
            continue
        if node is None:
            node = ET.SubElement(element, name)
        node.text = value
    return Datastore.from_xml(ET.tostring(ds.element, encoding="unicode"))


@pytest.fixture
def world():
    vm = VirtualMachine.from_xml(
        (fixtures.folder("04-vm-deploy") / "01-tm-clone.vm.xml").read_text())
    one = FakeOne({0: vm}, {100: _ds(100), 101: _ds(101, VG_NAME="vg-one-100")})
    calls = []
    answers = {
        "initiator": {"iqn": HOST1_IQN},
        "export": lambda host, args: {"iqn": "iqn.x:" + args[3], "serial": "s-" + args[3]},
        "attach": {"device": "/dev/sda"},
        "lv-info": {"exists": True},
        "lv-create": {"created": True},
        "lv-list": {"lvs": []},
    }
    settings = settings_mod.load({"TM_ISCSI_FRONTEND": "frontend", "TM_ISCSI_CONF": "/none"})
    ctx = ActionContext(settings=settings, one=one)
    ctx.node = lambda host: RecordingNode(host, calls, answers)
    return ctx, calls, one


def _run(ctx, line, capsys):
    words = line.split()
    code = tm_main.run(words[0].lower(), words[2:], ctx=ctx)
    err = capsys.readouterr().err
    plain = [l for l in err.splitlines() if not l.startswith("INFO:")]
    return code, plain


def test_clone_is_snapshot_then_export_to_this_host_then_attach(world, capsys):
    ctx, calls, _ = world
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0 and plain == []
    assert [(h, c) for h, c, _ in calls] == [
        ("storage", "lv-snapshot"), ("host1", "initiator"), ("storage", "export"),
        ("host1", "attach")]
    snap_args = calls[0][2]
    assert snap_args[:6] == ("--vg", "vg-one-100", "--origin", "img-0", "--lv", "vm-0-disk-0")
    assert ("--initiator", HOST1_IQN) == calls[2][2][4:6]
    attach = calls[3][2]
    assert attach[attach.index("--link") + 1] == "/var/lib/one/datastores/101/0/disk.0"
    assert attach[attach.index("--serial") + 1] == "s-vm-0-disk-0"


def test_stop_detaches_and_revokes_but_keeps_the_clone(world, capsys):
    ctx, calls, _ = world
    code, plain = _run(ctx, "MV iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 "
                            "frontend:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0, plain
    commands = [(h, c) for h, c, _ in calls]
    assert commands == [("host1", "detach"), ("host1", "initiator"), ("storage", "unexport")]
    assert ("--initiator", HOST1_IQN) == calls[2][2][-2:]


def test_delete_of_a_persistent_disk_never_removes_the_image(world, capsys):
    ctx, calls, _ = world
    code, _ = _run(ctx, "DELETE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.1 0 100",
                   capsys)
    assert code == 0
    assert "lv-remove" not in [c for _, c, _ in calls]


def test_delete_of_a_clone_removes_it_and_its_snapshots(world, capsys):
    ctx, calls, _ = world
    code, _ = _run(ctx, "DELETE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 0 100",
                   capsys)
    assert code == 0
    removed = [a for _, c, a in calls if c == "lv-remove"]
    assert removed == [("--vg", "vg-one-100", "--lv", "vm-0-disk-0")]


@pytest.mark.parametrize("line, fragment", [
    ("CLONE iscsi_lvm frontend:vg-one-100/img-0 host1:/var/lib/one//datastores/101/0/disk.0 0",
     "clone"),
    ("CLONE iscsi_lvm frontend:vg-one-100/img-0 host1:/var/lib/one//datastores/101/0/disk.0;rm "
     "0 100", "clone"),
    ("CLONE iscsi_lvm frontend:vg-one-100/img-0 host1:/var/lib/one//datastores/101/0/disk.0 x 100",
     "clone"),
    ("SNAP_CREATE_LIVE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 0 0 100",
     "not supported"),
    ("PREBACKUP iscsi_lvm host1:/var/lib/one//datastores/101/0 0 deploy-0 - 0 101",
     "not supported"),
])
def test_bad_input_is_one_line_and_touches_no_node(world, capsys, line, fragment):
    ctx, calls, _ = world
    code, plain = _run(ctx, line, capsys)
    assert code == 1
    assert len(plain) == 1 and fragment in plain[0]
    assert calls == []


def test_unknown_datastore_is_one_line(world, capsys):
    ctx, calls, one = world
    del one.datastores[100]
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 1 and len(plain) == 1 and "100" in plain[0]
    assert calls == []


def test_datastore_mismatch_with_the_vm_is_refused(world, capsys):
    ctx, calls, _ = world
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 555", capsys)
    assert code == 1 and len(plain) == 1 and "555" in plain[0]
    assert calls == []


def test_datastore_without_iscsi_host_is_refused_before_any_change(world, capsys):
    ctx, calls, one = world
    one.datastores[100] = _ds(100, ISCSI_HOST=None)
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 1 and "ISCSI_HOST" in plain[0]
    assert calls == []


TM_ACTIONS = ("clone ln mkswap mkimage context delete mvds cpds mv premigrate postmigrate "
              "failmigrate snap_create snap_create_live snap_delete snap_revert resize prebackup "
              "prebackup_live postbackup postbackup_live restore monitor").split()
DS_ACTIONS = "cp mkfs rm stat clone monitor snap_delete snap_revert snap_flatten export".split()


@pytest.mark.parametrize("kind, actions", [("tm", TM_ACTIONS), ("datastore", DS_ACTIONS)])
def test_every_action_oned_can_emit_exists_and_is_executable(kind, actions):
    for action in actions:
        path = os.path.join(REPO, "remotes", kind, "iscsi_lvm", action)
        assert os.path.exists(path), path
        assert os.stat(path).st_mode & stat.S_IXUSR, path
