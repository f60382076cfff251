"""`tm-iscsi smoke-test`: a VM instantiated through oned (the stand-in plays oned's lifecycle),
its disks checked on its host, terminated, waited for, and checked for leftovers."""
import json
import xml.etree.ElementTree as ET

import pytest

from tm_iscsi.admin import cli, smoke
from tm_iscsi.errors import DriverError

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    SYSDIR, cloud, iqn, nodes, oned, runner, session, vm_xml)

TEMPLATE = ("<VMTEMPLATE><ID>4</ID><NAME>smoke</NAME><TEMPLATE><CPU>1</CPU><MEMORY>128</MEMORY>"
            "</TEMPLATE></VMTEMPLATE>")


@pytest.fixture
def playing(oned, nodes, runner, monkeypatch):
    """oned: instantiate -> RUNNING on host1 (the captured VM's disks 0 and 2); terminate-hard ->
    DONE. host1 has both disks' sessions and links until then."""
    oned.put_document(TEMPLATE)

    def run(standin, template_id, name, *rest):
        vm_id = standin.instantiated[-1][0]
        standin.put_xml(vm_xml(vm_id, state=3, lcm=3, disks=(0, 2)))

    def act(standin, action, vm_id):
        standin.edit("vm", vm_id, "STATE", 6)
        standin.edit("vm", vm_id, "LCM_STATE", 0)
        nodes.answers[("host1", "sessions")] = {"sessions": []}
    oned.after("one.template.instantiate", run)
    oned.after("one.vm.action", act)
    nodes.answers[("host1", "sessions")] = {"sessions": [session("vm-0-disk-0"),
                                                         session("vm-0-disk-2")]}
    runner.answers[("host1", "sh")] = lambda remote, _input: (0, "".join(
        f"ok {w} /dev/sdx\n" for w in remote.split() if w.startswith(SYSDIR)), "")
    monkeypatch.setattr(smoke.time, "sleep", lambda s: None)
    return oned


def test_a_vm_runs_with_its_disks_attached_and_leaves_nothing(cloud, playing, runner, capsys):
    assert cli.main(["smoke-test", "--template", "4", "--name", "s1"], cloud=cloud) == 0
    out, err = capsys.readouterr()
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["instantiate", "ok"], ["running", "ok"], ["disks", "ok"], ["terminate", "ok"],
        ["leftovers", "ok"]]
    assert "ok: disks: 2 iscsi_lvm disk(s) attached on host1" in err
    assert playing.instantiated == [(0, 4, "s1")]
    assert playing.vm_actions == [("terminate-hard", 0)]
    host, remote, _ = runner.calls[0]
    assert host == "host1" and f"{SYSDIR}/0/disk.0 {SYSDIR}/0/disk.2" in remote


def test_a_missing_session_fails_the_test_but_the_vm_is_still_terminated(cloud, playing, nodes,
                                                                          capsys):
    nodes.answers[("host1", "sessions")] = {"sessions": [session("vm-0-disk-0")]}
    assert cli.main(["smoke-test", "--template", "4", "--json"], cloud=cloud) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["ok"] is False
    assert [(s["step"], s["ok"]) for s in data["steps"]] == [
        ("instantiate", True), ("running", True), ("check", False), ("terminate", True),
        ("leftovers", True)]
    assert err.count("\n") == 1 and f"disk 2: host1 has no session to {iqn('vm-0-disk-2')}" in err
    assert playing.vm_actions == [("terminate-hard", 0)]


def test_a_missing_link_is_named(cloud, playing, runner):
    runner.answers[("host1", "sh")] = (0, f"ok {SYSDIR}/0/disk.0 /dev/sda\n"
                                          f"missing {SYSDIR}/0/disk.2\n", "")
    with pytest.raises(smoke.SmokeFailure, match=f"host1:{SYSDIR}/0/disk.2 is not a link"):
        smoke.smoke_test(cloud, 4, poll=0)


def test_a_vm_that_fails_to_deploy_is_reported_with_oneds_error(cloud, playing, capsys):
    def failed(standin, template_id, name, *rest):
        vm_id = standin.instantiated[-1][0]
        root = ET.fromstring(vm_xml(vm_id, state=3, lcm=39, disks=(0,)))   # PROLOG_FAILURE
        ET.SubElement(root.find("USER_TEMPLATE"), "ERROR").text = "clone: pool too full"
        standin.put_xml(ET.tostring(root, encoding="unicode"))
    playing.after("one.template.instantiate", failed)
    with pytest.raises(DriverError, match="ACTIVE/PROLOG_FAILURE instead of RUNNING: clone: "
                                          "pool too full"):
        smoke.smoke_test(cloud, 4, poll=0)
    assert playing.vm_actions == [("terminate-hard", 0)]


def test_a_vm_that_never_runs_times_out(cloud, playing):
    playing.after("one.template.instantiate", lambda *a: None)   # stays PENDING
    ticks = iter(range(0, 10000, 50))
    with pytest.raises(DriverError, match="still PENDING/LCM_INIT after 100s, not RUNNING"):
        smoke.smoke_test(cloud, 4, timeout=100, poll=0, clock=lambda: next(ticks))


def test_keep_leaves_the_vm_running(cloud, playing, capsys):
    assert cli.main(["smoke-test", "--template", "4", "--keep"], cloud=cloud) == 0
    assert playing.vm_actions == []
    assert "left running (--keep)" in capsys.readouterr().out


def test_leftovers_after_done_fail_the_test(cloud, playing, nodes):
    nodes.answers["lv-list"] = {"lvs": [{"lv": "vm-0-disk-0", "tags": ["tm_iscsi"]}]}
    with pytest.raises(smoke.SmokeFailure, match="left behind: lv vg-one-100/vm-0-disk-0"):
        smoke.smoke_test(cloud, 4, poll=0)


def test_an_unknown_template(cloud, oned, capsys):
    assert cli.main(["smoke-test", "--template", "9"], cloud=cloud) == 1
    assert "oned has no template 9 (onetemplate list" in capsys.readouterr().err
