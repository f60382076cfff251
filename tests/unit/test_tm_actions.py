"""Front-end TM/DS actions with the nodes replaced by a recorder: which node is asked for what, in
which order, and how bad input is refused (one line, exit 1, nothing asked of any node).
Behaviour on devices is proven in tests/lab; this checks the decisions and the error paths."""
import json
import os
import stat

import pytest

from tm_iscsi import protocol, settings as settings_mod
from tm_iscsi.context import ActionContext
from tm_iscsi.one.objects import Datastore, VirtualMachine
from tm_iscsi.one.errors import OnedNoSuchObject
from tm_iscsi.tm import main as tm_main
from harness import fixtures

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


def _request(args):
    """The JSON request of a transaction call (`--request JSON`)."""
    assert args[0] == "--request"
    return json.loads(args[1])


def _storage_attach(host, args):
    disks = []
    for disk in _request(args)["disks"]:
        luns = {"clone": {"iqn": "iqn.x:" + disk["lv"], "serial": "s-" + disk["lv"]}}
        if protocol.has_read(disk["mode"]):
            for role, lv in (("base", disk["image_lv"] + "-base"), ("map", disk["lv"] + "-map")):
                luns[role] = {"iqn": "iqn.x:" + lv, "serial": "s-" + lv}
        disks.append({"lv": disk["lv"], "mode": disk["mode"], "luns": luns, "created": True,
                      "base_key": "vg-one-100.img-0-base.g1" if "base" in luns else None})
    return {"disks": disks}


def _host_detach(host, args):
    request = _request(args)
    return {"initiator": HOST1_IQN, "disks": [
        {"name": d["name"], "existed": True, "base_released": True}
        for d in request["disks"]],
        "dir_removed": True if request.get("remove_dir") else None}


def _each(answer):
    """A transaction as the node runs it: one answer per --request, several in "results"."""
    def run(host, args):
        pairs = [args[i:i + 2] for i in range(0, len(args), 2) if args[i] == "--request"]
        answers = [answer(host, pair) for pair in pairs]
        return answers[0] if len(answers) == 1 else {"results": answers}
    return run


TRANSACTIONS = {
    "storage-attach": _each(_storage_attach),
    "host-attach": _each(lambda host, args: {
        "initiator": HOST1_IQN, "initiator_mismatch": False,
        "disks": [{"name": d["name"], "mode": d["mode"]} for d in _request(args)["disks"]]}),
    "host-detach": _each(_host_detach),
    "storage-release": _each(lambda host, args: {"disks": []}),
}


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
    # The captured datastore asks for read+writeback; these tests are about the plain path.
    one = FakeOne({0: vm}, {100: _ds(100, CACHE_MODE="none"),
                            101: _ds(101, VG_NAME="vg-one-100")})
    calls = []
    answers = {
        **TRANSACTIONS,
        "initiator": {"iqn": HOST1_IQN},
        "export": lambda host, args: {"iqn": "iqn.x:" + args[3], "serial": "s-" + args[3]},
        "attach": {"device": "/dev/sda"},
        "lv-info": lambda host, args: {"exists": not args[3].endswith(("-map", "-base")),
                                       "tags": []},
        "stack-teardown": {"existed": False},
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


def test_clone_is_one_storage_transaction_then_one_host_transaction(world, capsys):
    ctx, calls, _ = world
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0 and plain == []
    # oned has no ISCSI_INITIATOR for host1 here: it is asked once.
    assert [(h, c) for h, c, _ in calls] == [
        ("host1", "initiator"), ("storage", "storage-attach"), ("host1", "host-attach")]
    storage = _request(calls[1][2])
    assert storage["initiator"] == HOST1_IQN and storage["host"] == "host1"
    (disk,) = storage["disks"]
    assert disk["lv"] == "vm-0-disk-0" and disk["mode"] == "none"
    assert disk["create"]["origin"] == "img-0" and disk["create"]["owner"]["vm"] == 0
    (host_disk,) = _request(calls[2][2])["disks"]
    assert host_disk["link"] == "/var/lib/one/datastores/101/0/disk.0"
    assert host_disk["luns"] == {"clone": {"iqn": "iqn.x:vm-0-disk-0", "serial": "s-vm-0-disk-0"}}


def test_the_initiator_oned_records_spares_the_call_and_one_learnt_is_recorded(world, capsys):
    import xml.etree.ElementTree as ET
    ctx, calls, one = world
    updates = []
    host = ET.fromstring("<HOST><ID>3</ID><NAME>host1</NAME><TEMPLATE/></HOST>")
    one.host_pool = lambda: [host]
    one.host_update = lambda host_id, template: updates.append((host_id, template))
    line = ("CLONE iscsi_lvm frontend:vg-one-100/img-0 "
            "host1:/var/lib/one//datastores/101/0/disk.0 0 100")
    assert _run(ctx, line, capsys)[0] == 0
    assert updates == [(3, {"ISCSI_INITIATOR": HOST1_IQN})]
    ET.SubElement(host.find("TEMPLATE"), "ISCSI_INITIATOR").text = HOST1_IQN
    calls.clear()
    fresh = ActionContext(settings=ctx.settings, one=one)
    fresh.node = ctx.node
    assert _run(fresh, line, capsys)[0] == 0
    assert [c for _, c, _ in calls] == ["storage-attach", "host-attach"]


def test_a_host_whose_initiator_changed_gets_the_export_again(world, capsys):
    import xml.etree.ElementTree as ET
    ctx, calls, one = world
    host = ET.fromstring("<HOST><ID>3</ID><NAME>host1</NAME><TEMPLATE>"
                         "<ISCSI_INITIATOR>iqn.2026-11.lab:old</ISCSI_INITIATOR></TEMPLATE></HOST>")
    one.host_pool = lambda: [host]
    one.host_update = lambda host_id, template: None
    answers = {}

    def host_attach(h, args):
        request = _request(args)
        if request["initiator"] != HOST1_IQN:
            return {"initiator": HOST1_IQN, "initiator_mismatch": True, "disks": []}
        return TRANSACTIONS["host-attach"](h, args)
    answers["host-attach"] = host_attach
    ctx.node = lambda h, base=ctx.node: _with_answer(base(h), "host-attach", host_attach)
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0, plain
    assert [c for _, c, _ in calls] == ["storage-attach", "host-attach", "storage-attach",
                                        "host-attach", "storage-release"]
    assert _request(calls[2][2])["initiator"] == HOST1_IQN
    assert _request(calls[4][2])["initiator"] == "iqn.2026-11.lab:old"


def test_chap_secret_goes_to_both_transactions_on_stdin_never_in_argv(world, capsys):
    ctx, calls, one = world
    one.datastores[100] = _ds(100, CACHE_MODE="none", ISCSI_CHAP_USER="onechap",
                              ISCSI_CHAP_PASSWORD="s3cret-Passw0rd!")
    stdins = {}
    plain_node = ctx.node

    def node(host):
        recorder = plain_node(host)
        record = recorder.call

        def call(command, *args, **kwargs):
            stdins[command] = kwargs.get("stdin")
            return record(command, *args, **kwargs)
        recorder.call = call
        return recorder
    ctx.node = node
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0 and plain == []
    for command in ("storage-attach", "host-attach"):
        args = next(a for _, c, a in calls if c == command)
        assert _request(args)["chap_user"] == "onechap"
        assert stdins[command] == "s3cret-Passw0rd!\n"
    assert not any("s3cret" in " ".join(a) for _, _, a in calls)
    assert not any(stdins[c] for c in stdins if c not in ("storage-attach", "host-attach"))


def test_a_chap_secret_with_a_blank_is_refused_before_any_node_call(world, capsys):
    ctx, calls, one = world
    one.datastores[100] = _ds(100, CACHE_MODE="none", ISCSI_CHAP_USER="onechap",
                              ISCSI_CHAP_PASSWORD="two words")
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 1 and len(plain) == 1 and "ISCSI_CHAP_PASSWORD" in plain[0]
    assert "two words" not in plain[0] and calls == []


def test_stop_detaches_and_revokes_but_keeps_the_clone(world, capsys):
    ctx, calls, _ = world
    code, plain = _run(ctx, "MV iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 "
                            "frontend:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0, plain
    # The host says its initiator name as it lets go: no call to ask it.
    assert [(h, c) for h, c, _ in calls] == [("host1", "host-detach"),
                                             ("storage", "storage-release")]
    (host_disk,) = _request(calls[0][2])["disks"]
    assert host_disk["flush"] is True
    release = _request(calls[1][2])
    assert release["initiator"] == HOST1_IQN
    assert release["disks"][0]["remove"] is False and release["disks"][0]["unexport"] is True


def test_delete_of_a_persistent_disk_never_removes_the_image(world, capsys):
    ctx, calls, _ = world
    code, _ = _run(ctx, "DELETE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.1 0 100",
                   capsys)
    assert code == 0
    (release,) = [_request(a) for _, c, a in calls if c == "storage-release"]
    assert release["disks"][0]["lv"] == "img-1" and release["disks"][0]["remove"] is False


def test_delete_of_a_clone_removes_it_in_one_storage_transaction(world, capsys):
    ctx, calls, _ = world
    code, _ = _run(ctx, "DELETE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 0 100",
                   capsys)
    assert code == 0
    assert [c for _, c, _ in calls] == ["host-detach", "storage-release"]
    (disk,) = _request(calls[1][2])["disks"]
    assert disk["lv"] == "vm-0-disk-0" and disk["remove"] is True


@pytest.mark.parametrize("line, fragment", [
    ("CLONE iscsi_lvm frontend:vg-one-100/img-0 host1:/var/lib/one//datastores/101/0/disk.0 0",
     "clone"),
    ("CLONE iscsi_lvm frontend:vg-one-100/img-0 host1:/var/lib/one//datastores/101/0/disk.0;rm "
     "0 100", "clone"),
    ("CLONE iscsi_lvm frontend:vg-one-100/img-0 host1:/var/lib/one//datastores/101/0/disk.0 x 100",
     "clone"),
    ("PREBACKUP iscsi_lvm host1:/var/lib/one//datastores/101/0 0 deploy-0 - 0 101",
     "VM's XML on stdin"),
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


class LvState:
    """lv-info / lv-tag / lv-create / lv-snapshot / lv-remove over a dict, so the cache paths see
    the storage node's LVs and tags change as the real node would."""

    def __init__(self, existing=()):
        self.lvs = {name: set() for name in existing}
        self.size_bytes = 64 << 20

    def answers(self):
        def info(host, args):
            lv = args[3]
            return {"exists": lv in self.lvs, "tags": sorted(self.lvs.get(lv, ()))}

        def tag(host, args):
            lv = args[3]
            pairs = list(zip(args[4::2], args[5::2]))
            for flag, value in pairs:
                if flag == "--add":
                    key = value.split("=", 1)[0] + "="
                    self.lvs[lv] = {t for t in self.lvs[lv] if not t.startswith(key)}
                    self.lvs[lv].add(value)
                else:
                    self.lvs[lv].discard(value)
            return {"tags": sorted(self.lvs[lv])}

        def create(host, args):
            self.lvs.setdefault(args[args.index("--lv") + 1], set())
            return {"created": True}

        def remove(host, args):
            return {"removed": self.lvs.pop(args[3], None) is not None}

        def release(host, args):
            # What the node answers and marks for a kept disk (txn_storage._release).
            disks = []
            for disk in _request(args)["disks"]:
                answer = {"lv": disk["lv"], "removed": False}
                if disk.get("keep"):
                    tags = self.lvs.get(disk["lv"])
                    answer["exists"] = tags is not None
                    if tags is not None:
                        if not any(t.startswith(protocol.SYNC_IMAGE_TAG) for t in tags):
                            tags.add(protocol.SYNC_PENDING_TAG)
                        answer.update(size_bytes=self.size_bytes, tags=sorted(tags))
                disks.append(answer)
            return {"disks": disks}

        return {"lv-info": info, "lv-tag": tag, "lv-create": create, "lv-snapshot": create,
                "lv-remove": remove, "storage-release": _each(release),
                "exports": {"targets": []},
                "stack-assemble": {"top": "/dev/mapper/tmi-top"},
                "stack-teardown": {"existed": True, "read_cache_released": True},
                "stack-flush": {"dirty_after_blocks": 0}}


@pytest.fixture
def cached_world(world):
    ctx, calls, one = world
    one.datastores[100] = _ds(100, CACHE_MODE="read+writeback")
    lvs = LvState(["img-0", "img-1"])
    answers = {
        **TRANSACTIONS,
        "initiator": {"iqn": HOST1_IQN},
        "lv-list": {"lvs": []},
    }
    answers.update(lvs.answers())
    ctx.node = lambda host: RecordingNode(host, calls, answers)
    return ctx, calls, lvs


def test_clone_with_read_cache_asks_for_the_read_layer_and_assembles_over_three_luns(
        cached_world, capsys):
    ctx, calls, lvs = cached_world
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0, plain
    assert [c for _, c, _ in calls] == ["initiator", "storage-attach", "host-attach"]
    (disk,) = _request(calls[1][2])["disks"]
    assert disk["mode"] == "read+writeback" and disk["image_lv"] == "img-0"
    (host_disk,) = _request(calls[2][2])["disks"]
    assert sorted(host_disk["luns"]) == ["base", "clone", "map"]
    assert host_disk["mode"] == "read+writeback"
    assert host_disk["base_key"] == "vg-one-100.img-0-base.g1"
    assert host_disk["link"] == "/var/lib/one/datastores/101/0/disk.0"


def test_a_refusal_of_the_storage_node_is_the_action_s_one_line(cached_world, capsys):
    from tm_iscsi.errors import DriverError
    ctx, calls, lvs = cached_world

    def refuse(host, args):
        raise DriverError("storage: vg-one-100/vm-0-disk-0 has unflushed write-back data on host2")
    ctx.node = lambda h, base=ctx.node: _with_answer(base(h), "storage-attach", refuse)
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 1 and len(plain) == 1 and "host2" in plain[0] and "unflushed" in plain[0]
    assert "host-attach" not in [c for _, c, _ in calls]


def test_the_mode_the_storage_node_grants_is_the_one_the_host_builds(cached_world, capsys):
    ctx, calls, lvs = cached_world

    def no_read(host, args):
        out = _storage_attach(host, args)
        for disk in out["disks"]:
            disk.update(mode="writeback", base_key=None, luns={"clone": disk["luns"]["clone"]})
        return out
    ctx.node = lambda h, base=ctx.node: _with_answer(base(h), "storage-attach", no_read)
    code, plain = _run(ctx, "MV iscsi_lvm frontend:/var/lib/one//datastores/101/0/disk.0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0, plain
    (host_disk,) = _request(next(a for _, c, a in calls if c == "host-attach"))["disks"]
    assert host_disk["mode"] == "writeback" and sorted(host_disk["luns"]) == ["clone"]


def test_delete_drops_the_cache_of_a_clone_and_keeps_none_of_it(cached_world, capsys):
    ctx, calls, lvs = cached_world
    code, plain = _run(ctx, "DELETE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 0 100",
                       capsys)
    assert code == 0, plain
    (host_disk,) = _request(next(a for _, c, a in calls if c == "host-detach"))["disks"]
    assert host_disk["flush"] is False and sorted(host_disk["luns"]) == ["base", "clone", "map"]
    (disk,) = _request(next(a for _, c, a in calls if c == "storage-release"))["disks"]
    assert disk["remove"] is True and disk["release_base_of"] == "img-0"


def test_stop_flushes_before_the_host_lets_go(cached_world, capsys):
    ctx, calls, lvs = cached_world
    code, plain = _run(ctx, "MV iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 "
                            "frontend:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0, plain
    assert [c for _, c, _ in calls] == ["host-detach", "storage-release"]
    assert _request(calls[0][2])["disks"][0]["flush"] is True
    assert _request(calls[1][2])["disks"][0]["wb_clear"] is True


def test_delete_with_sync_flushes_keeps_the_clone_as_an_image_and_drops_its_map(
        cached_world, capsys):
    """TM_ISCSI_SYNC=YES: the clone is flushed (not dropped), registered in oned with the name
    the user chose, retagged as an image, and its region map goes; replayed, nothing repeats."""
    import xml.etree.ElementTree as ET
    ctx, calls, lvs = cached_world
    lvs.lvs["vm-0-disk-0"] = {"tm_iscsi", "tm_iscsi.kind=clone", "tm_iscsi.vm=0"}
    vm = ctx.one.vms[0]
    user = vm.element.find("USER_TEMPLATE")
    ET.SubElement(user, "TM_ISCSI_SYNC").text = "YES"
    ET.SubElement(user, "TM_ISCSI_SYNC_NAME").text = "golden"
    allocated = []
    ctx.one.image_allocate = lambda template, ds_id: allocated.append((template, ds_id)) or 42
    calls.clear()
    line = "DELETE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 0 100"
    code, plain = _run(ctx, line, capsys)
    assert code == 0, plain
    # The release answers the size and marks the disk pending: one retag after oned's answer.
    assert [c for _, c, _ in calls] == ["host-detach", "storage-release", "lv-tag"]
    (host_disk,) = _request(next(a for _, c, a in calls if c == "host-detach"))["disks"]
    assert host_disk["flush"] is True
    (released,) = _request(next(a for _, c, a in calls if c == "storage-release"))["disks"]
    assert released["remove"] is False and released["map"] == "forget" and released["keep"]
    assert protocol.SYNC_PENDING_TAG not in lvs.lvs["vm-0-disk-0"]
    ((template, ds_id),) = allocated
    # YES keeps every non-persistent disk: this VM has one, so the name is the one asked for.
    assert ds_id == 100 and 'NAME = "golden"' in template
    assert 'SOURCE = "vg-one-100/vm-0-disk-0"' in template and 'SIZE = "64"' in template
    assert "tm_iscsi.image-of-sync=42" in lvs.lvs["vm-0-disk-0"]
    assert "lv-remove" not in [c for _, c, a in calls]
    code, plain = _run(ctx, line, capsys)
    assert code == 0 and len(allocated) == 1, plain


def _with_answer(node, command, answer):
    node.answers = {**node.answers, command: answer}
    return node


def before_each(ctx, command, hook):
    """ctx.node's nodes run hook(host, args, kwargs) ahead of each `command` call (to look at
    its stdin, or to fail it by raising)."""
    plain = ctx.node

    def node(host):
        recorder = plain(host)
        call = recorder.call

        def hooked(name, *args, **kwargs):
            if name == command:
                hook(host, args, kwargs)
            return call(name, *args, **kwargs)
        recorder.call = hooked
        return recorder
    ctx.node = node


@pytest.mark.parametrize("value, disk_id, wanted", [
    ("YES", 0, True), ("yes", 3, True), ("NO", 0, False), ("", 0, False), ("0", 0, True),
    ("0", 2, False), ("0 2", 2, True), ("0,2", 1, False), ("false", 0, False)])
def test_sync_request_names_disks_and_0_is_disk_0(value, disk_id, wanted):
    import xml.etree.ElementTree as ET
    from tm_iscsi.tm import sync
    vm = VirtualMachine.from_xml(
        (fixtures.folder("04-vm-deploy") / "01-tm-clone.vm.xml").read_text())
    ET.SubElement(vm.element.find("USER_TEMPLATE"), "TM_ISCSI_SYNC").text = value
    assert sync.requested(vm, disk_id) is wanted


def test_sync_request_that_is_neither_yes_nor_ids_is_refused():
    import xml.etree.ElementTree as ET
    from tm_iscsi.errors import DriverError
    from tm_iscsi.tm import sync
    vm = VirtualMachine.from_xml(
        (fixtures.folder("04-vm-deploy") / "01-tm-clone.vm.xml").read_text())
    ET.SubElement(vm.element.find("USER_TEMPLATE"), "TM_ISCSI_SYNC").text = "disk0"
    with pytest.raises(DriverError, match="must be YES or a list of disk ids"):
        sync.requested(vm, 0)


def test_live_snapshot_flushes_then_snapshots_then_caches_writes_again(cached_world, capsys):
    """A running write-back disk: its dirty blocks reach the storage node's LV and the layer stays
    clean until the thin snapshot exists; only then does it cache writes again."""
    ctx, calls, lvs = cached_world
    lvs.lvs["vm-0-disk-0"] = {"tm_iscsi.kind=clone", "tm_iscsi.vm=0", "tm_iscsi.disk=0"}
    code, plain = _run(ctx, "SNAP_CREATE_LIVE iscsi_lvm "
                            "host1:/var/lib/one//datastores/101/0/disk.0 3 0 100", capsys)
    assert code == 0, plain
    order = [(host, command) for host, command, _ in calls
             if command in ("stack-flush", "lv-snapshot", "stack-writeback")]
    assert order == [("host1", "stack-flush"), ("storage", "lv-snapshot"),
                     ("host1", "stack-writeback")]
    snap = next(args for _, command, args in calls if command == "lv-snapshot")
    assert "vm-0-disk-0-snap-3" in snap


def test_live_snapshot_without_write_back_layer_asks_no_host(world, capsys):
    ctx, calls, _ = world
    code, plain = _run(ctx, "SNAP_CREATE_LIVE iscsi_lvm "
                            "host1:/var/lib/one//datastores/101/0/disk.0 3 0 100", capsys)
    assert code == 0, plain
    assert [c for c in calls if c[0] == "host1"] == []
    assert any(command == "lv-snapshot" for _, command, _ in calls)


def _vm_with_sync(value, name=None, clones=(0,)):
    import xml.etree.ElementTree as ET
    vm = VirtualMachine.from_xml(
        (fixtures.folder("04-vm-deploy") / "01-tm-clone.vm.xml").read_text())
    for disk in vm.element.findall("TEMPLATE/DISK"):
        clone = disk.find("CLONE")
        if clone is None:
            clone = ET.SubElement(disk, "CLONE")
        clone.text = "YES" if int(disk.findtext("DISK_ID")) in clones else "NO"
    user = vm.element.find("USER_TEMPLATE")
    ET.SubElement(user, "TM_ISCSI_SYNC").text = value
    if name:
        ET.SubElement(user, "TM_ISCSI_SYNC_NAME").text = name
    return VirtualMachine.from_xml(ET.tostring(vm.element, encoding="unicode"))


@pytest.mark.parametrize("value, clones, disk_id, wanted", [
    ("YES", (0,), 0, "golden"), ("0", (0,), 0, "golden"),
    ("YES", (0, 1), 1, "golden-disk-1"), ("0 1", (0, 1), 0, "golden-disk-0"),
    # Asked for two disks, but disk 1 is not a clone: one disk is kept.
    ("0 1", (0,), 0, "golden")])
def test_sync_name_gets_the_disk_suffix_only_when_several_disks_are_kept(
        value, clones, disk_id, wanted):
    from tm_iscsi.tm import sync
    assert sync.image_name(_vm_with_sync(value, "golden", clones), disk_id) == wanted


def test_sync_name_taken_in_oned_gets_the_first_free_suffix():
    """oned refuses a NAME its owner already has: the kept disk is registered as <name>-1 (the
    stand-in refuses duplicates as oned's ImagePool does)."""
    from harness.oned import OnedStandIn
    from tm_iscsi.one.client import OneClient
    from tm_iscsi.tm import sync
    with OnedStandIn() as oned:
        oned.put_file(fixtures.folder("00-datastores") / "ds-100.after-monitor.xml")
        client = OneClient(oned.endpoint, oned.session)
        first = client.image_allocate('NAME = "golden"', 100)

        class Ctx:
            one = client
        name, image_id = sync._allocate_with_free_name(
            Ctx, "golden", lambda chosen: f'NAME = "{chosen}"', 100)
        assert (name, image_id) == ("golden-1", first + 1)
        name, _ = sync._allocate_with_free_name(
            Ctx, "golden", lambda chosen: f'NAME = "{chosen}"', 100)
        assert name == "golden-2"


@pytest.mark.parametrize("attr, wanted", [(None, "1024"), ("256", "256")])
def test_write_back_cache_size_is_the_datastore_s(cached_world, capsys, attr, wanted):
    ctx, calls, lvs = cached_world
    if attr:
        ctx.one.datastores[100] = _ds(100, CACHE_MODE="read+writeback", WRITEBACK_CACHE_MB=attr)
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 0, plain
    (host_disk,) = _request(next(a for _, c, a in calls if c == "host-attach"))["disks"]
    assert host_disk["wb_size_mib"] == int(wanted)


@pytest.mark.parametrize("value", ["0", "63", "big", "9" * 5000, "2097152"])
def test_a_bad_write_back_cache_size_is_refused_before_any_change(world, capsys, value):
    ctx, calls, one = world
    one.datastores[100] = _ds(100, CACHE_MODE="writeback", WRITEBACK_CACHE_MB=value)
    code, plain = _run(ctx, "CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                            "host1:/var/lib/one//datastores/101/0/disk.0 0 100", capsys)
    assert code == 1 and "WRITEBACK_CACHE_MB" in plain[0] and "64 to 1048576" in plain[0]
    assert calls == []


def test_disks_of_several_datastores_on_one_storage_node_cost_one_call_each_way(world):
    from tm_iscsi import attachment
    from tm_iscsi.volumes import Volume
    ctx, calls, one = world
    import xml.etree.ElementTree as ET
    element = _ds(100, ISCSI_HOST="storage2").element
    element.find("ID").text = "102"
    one.datastores[102] = Datastore.from_xml(ET.tostring(element, encoding="unicode"))
    image_ds, system_ds, other = ctx.datastore(100), ctx.datastore(101), ctx.datastore(102)
    ctx.initiator = lambda host: HOST1_IQN
    disks = [attachment.Attach(Volume(image_ds, "vm-5-disk-0", "clone"), "/d/5/disk.0"),
             attachment.Attach(Volume(system_ds, "vm-5-disk-1", "volatile"), "/d/5/disk.1"),
             attachment.Attach(Volume(image_ds, "vm-5-disk-2", "clone"), "/d/5/disk.2"),
             attachment.Attach(Volume(other, "vm-5-disk-3", "clone"), "/d/5/disk.3")]
    assert attachment.attach(ctx, "host1", disks) == ["none"] * 4
    # One call per storage node (its datastores as one request each), one to the host.
    assert [(h, c, args.count("--request")) for h, c, args in calls] == [
        ("storage", "storage-attach", 2), ("storage2", "storage-attach", 1),
        ("host1", "host-attach", 3)]
    host_requests = [json.loads(a) for a in calls[2][2][1::2]]
    assert [[d["link"] for d in r["disks"]] for r in host_requests] == [
        ["/d/5/disk.0", "/d/5/disk.2"], ["/d/5/disk.1"], ["/d/5/disk.3"]]
    calls.clear()
    releases = [attachment.Release(d.volume, d.link) for d in disks]
    attachment.detach(ctx, "host1", releases, remove_dir="/d/5")
    assert [(h, c, args.count("--request")) for h, c, args in calls] == [
        ("host1", "host-detach", 3), ("storage", "storage-release", 2),
        ("storage2", "storage-release", 1)]
    detach_requests = [json.loads(a) for a in calls[0][2][1::2]]
    # The VM directory goes with the last request, after every disk's stack.
    assert [r.get("remove_dir") for r in detach_requests] == [None, None, "/d/5"]


def test_a_node_answering_fewer_results_than_requests_is_one_line(world):
    from tm_iscsi import attachment
    from tm_iscsi.errors import DriverError
    from tm_iscsi.volumes import Volume
    ctx, calls, one = world
    ctx.initiator = lambda host: HOST1_IQN
    base = ctx.node
    ctx.node = lambda h: _with_answer(base(h), "storage-attach",
                                      lambda host, args: {"results": []})
    disks = [attachment.Attach(Volume(ctx.datastore(100), "vm-5-disk-0", "clone")),
             attachment.Attach(Volume(ctx.datastore(101), "vm-5-disk-1", "volatile"))]
    with pytest.raises(DriverError, match="answered 2 requests"):
        attachment.attach(ctx, "host1", disks)


def test_a_live_migration_is_three_calls_before_and_two_after_the_switch(
        cached_world, capsys, monkeypatch):
    import io
    ctx, calls, _ = cached_world
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    ctx.initiator = lambda host: HOST1_IQN
    vm_dir = "/var/lib/one/datastores/101/0"
    code, plain = _run(ctx, f"PREMIGRATE iscsi_lvm host1 host2 {vm_dir} 0 101", capsys)
    assert code == 0, plain
    # The source flushes its write-back disk and packs the directory in one call, the storage
    # node exports, the destination unpacks the directory and assembles, in one call.
    assert [(h, c) for h, c, _ in calls] == [
        ("host1", "dir-pack"), ("storage", "storage-attach"), ("host2", "host-attach")]
    assert calls[0][2][:4] == ("--path", vm_dir, "--flush", "vm-0-disk-0")
    assert calls[2][2][-2:] == ("--unpack-dir", vm_dir)
    disk = _request(calls[1][2])["disks"][0]
    assert disk["lv"] == "vm-0-disk-0"
    assert disk["wb_host"] == "host2" and disk["wb_from"] == "host1"
    calls.clear()
    code, plain = _run(ctx, f"POSTMIGRATE iscsi_lvm host1 host2 {vm_dir} 0 101", capsys)
    assert code == 0, plain
    assert [(h, c) for h, c, _ in calls] == [("host1", "host-detach"),
                                             ("storage", "storage-release")]
