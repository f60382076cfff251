"""A small cloud for the admin and hook unit tests: the oned stand-in serving the captured
datastores, the VM of 04-vm-deploy and hand-made hosts; nodes replaced by a recorder that
answers per host and command; plain SSH commands (find, the doctor's probe) by a fake runner.
(Also checks the world itself, so a broken fixture fails here first.)"""
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import pytest

from tm_iscsi import naming, settings as settings_mod
from tm_iscsi.admin.cloud import Cloud
from tm_iscsi.errors import DriverError
from tm_iscsi.one.client import OneClient
from harness import fixtures
from harness.documents import host_xml, image_xml, vm_xml  # noqa: F401 - used by the tests
from harness.oned import OnedStandIn

VG = "vg-one-100"
BASE = naming.DEFAULT_IQN_BASE
HOST1_IQN = "iqn.2026-11.lab.tm-iscsi:host1"
HOST2_IQN = "iqn.2026-11.lab.tm-iscsi:host2"
SYSDIR = "/var/lib/one/datastores/101"
PORTAL = "10.213.77.10:3260"


def iqn(lv):
    return naming.target_iqn(VG, lv, BASE)


def lv(name, **owner):
    return {"lv": name, "size_bytes": 64 << 20, "origin": None,
            "tags": naming.lv_tags(**owner) if owner else []}


def target(lv_name, *initiators):
    return {"iqn": iqn(lv_name), "backstore": naming.backstore_name(VG, lv_name),
            "dev": f"/dev/{VG}/{lv_name}", "serial": naming.lun_serial(VG, lv_name),
            "initiators": list(initiators)}


def session(lv_name, state="LOGGED_IN", devices=True):
    return {"iqn": iqn(lv_name), "portal": PORTAL, "sid": 1, "state": state,
            "devices": [{"lun": 0, "device": "/dev/sda", "serial": "x"}] if devices else []}


class FakeNodes:
    """node_factory for Cloud: every call is recorded as (host, command, args); answers come from
    `answers[(host, command)]` or `answers[command]`: a dict, a callable(host, args) or an
    exception to raise."""

    def __init__(self):
        self.calls = []
        self.answers = {}
        self.streams = {}   # command -> bytes written to the sink of stream_out

    def __call__(self, host):
        return _FakeNode(self, host)

    def commands(self, host=None):
        return [(h, c) for h, c, _a, in self.calls if host is None or h == host]

    def args_of(self, command):
        return [a for _h, c, a in self.calls if c == command]


class _FakeNode:
    def __init__(self, nodes, host):
        self.nodes, self.host = nodes, host

    def call(self, command, *args, **kwargs):
        self.nodes.calls.append((self.host, command, tuple(str(a) for a in args)))
        answer = self.nodes.answers.get((self.host, command), self.nodes.answers.get(command, {}))
        if isinstance(answer, Exception):
            raise answer
        return answer(self.host, args) if callable(answer) else dict(answer)

    stream_in = call

    def stream_out(self, command, *args, sink=None, **kwargs):
        self.nodes.calls.append((self.host, command, tuple(str(a) for a in args)))
        sink.write(self.nodes.streams.get(command, b""))


class FakeRunner:
    """subprocess.run stand-in for Cloud.shell: answers[(host, program)] -> (rc, stdout, stderr)
    or a callable(argv, input) returning that."""

    def __init__(self):
        self.calls = []
        self.answers = {}

    def __call__(self, argv, input=None, **kwargs):
        host = argv[argv.index("--") + 1]
        remote = argv[argv.index("--") + 2]
        self.calls.append((host, remote, input))
        program = remote.split()[0]
        answer = self.answers.get((host, program), self.answers.get(program, (0, "", "")))
        if callable(answer):
            answer = answer(remote, input)
        rc, out, err = answer
        return subprocess.CompletedProcess(argv, rc, out, err)


@pytest.fixture
def oned():
    with OnedStandIn() as standin:
        root = fixtures.folder("00-datastores")
        standin.put_file(root / "ds-100.after-monitor.xml")
        standin.put_file(root / "ds-101.after-monitor.xml")

        def sys_vg(element):
            ET.SubElement(element.find("TEMPLATE"), "VG_NAME").text = VG
        standin.edit_with("datastore", 101, sys_vg)

        def safe_tmp(element):
            # Where the tests keep the files they import (oned's default allows /var/tmp only).
            element.find("TEMPLATE/SAFE_DIRS").text = f"/var/tmp {tempfile.gettempdir()}"
        standin.edit_with("datastore", 100, safe_tmp)
        standin.put_document(host_xml(0, "host1", vm_ids=(0,)))
        standin.put_document(host_xml(1, "host2"))
        yield standin


@pytest.fixture
def nodes():
    nodes = FakeNodes()
    nodes.answers.update({
        "initiator": lambda host, args: {"iqn": f"iqn.2026-11.lab.tm-iscsi:{host}"},
        "lv-list": {"vg": VG, "lvs": []},
        "exports": {"targets": []},
        "sessions": {"sessions": []},
        "fence": {"targets": []},
        "cache-status": lambda host, args: {"vg": "vg-tm-iscsi-cache", "present": True,
                                            "free_bytes": 4 << 30, "stacks": []},
    })
    return nodes


@pytest.fixture
def runner():
    return FakeRunner()


@pytest.fixture
def cloud(oned, nodes, runner):
    settings = settings_mod.load({"TM_ISCSI_FRONTEND": "frontend", "TM_ISCSI_CONF": "/none",
                                  "TM_ISCSI_NODE_CMD": "sudo -n tm-iscsi-node"})
    one = OneClient(oned.endpoint, oned.session, timeout=10)
    return Cloud(one=one, settings=settings, node_factory=nodes, runner=runner)


def test_the_world_reads_as_oned_would(cloud, oned):
    oned.put_xml(vm_xml(0))
    assert [e.id for e in cloud.datastores()] == [100, 101]
    assert [(g.host, g.vg, g.ds_ids) for g in cloud.storage_groups()] == [
        ("storage", VG, (100, 101))]
    assert cloud.system_dirs() == [SYSDIR]
    assert [(h.name, h.state, h.vm_ids) for h in cloud.hosts()] == [
        ("host1", "MONITORED", (0,)), ("host2", "MONITORED", ())]
    volumes = {d: (v.lv, v.kind) for d, v in cloud.volumes_of(cloud.vms()[0])}
    assert volumes == {0: ("vm-0-disk-0", "clone"), 1: ("img-1", "image"),
                       2: ("vm-0-disk-2", "volatile"), 3: ("vm-0-disk-3", "volatile")}


def test_a_datastore_that_is_not_ours_is_refused(cloud):
    with pytest.raises(DriverError, match="not an iscsi_lvm datastore"):
        cloud.datastore(0)
