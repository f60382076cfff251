"""`tm-iscsi deploy`: the calls it makes to oned (one burst of instantiations, round-robin
deploys with --hosts, one pool read per poll), a failed VM reported with oned's error without
holding up the others, the deadline, and what is refused before anything is created."""
import json
import xml.etree.ElementTree as ET

import pytest

from tm_iscsi.admin import cli, massdeploy

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    cloud, image_xml, nodes, oned, runner)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _running(oned, vm_id, host="host1", lcm=3, error=None):
    def change(root):
        root.find("STATE").text = "3"
        root.find("LCM_STATE").text = str(lcm)
        history = ET.SubElement(root.find("HISTORY_RECORDS"), "HISTORY")
        for tag, value in (("SEQ", 0), ("HOSTNAME", host), ("HID", 0), ("OID", vm_id)):
            ET.SubElement(history, tag).text = str(value)
        if error:
            ET.SubElement(root.find("USER_TEMPLATE"), "ERROR").text = error
    oned.edit_with("vm", vm_id, change)


@pytest.fixture
def template(oned):
    oned.put_xml(image_xml(0))
    oned.put_document("<VMTEMPLATE><ID>4</ID><NAME>t</NAME><TEMPLATE><DISK><IMAGE_ID>0"
                      "</IMAGE_ID></DISK></TEMPLATE></VMTEMPLATE>")


def test_a_burst_followed_to_running_and_a_failure_reported(cloud, oned, template):
    clock = Clock()
    seen = []

    def progress(running, failed, total):
        seen.append((running, failed, total))
        if len(seen) == 2:
            _running(oned, 0)
            _running(oned, 1, lcm=39, error="thin pool is too full")
        if len(seen) == 3:
            _running(oned, 2, host="host2")

    report = massdeploy.deploy(cloud, 3, template_id=4, poll=5, sleep=clock.sleep,
                               clock=clock, progress=progress)
    assert [t.vm_id for t in report.vms] == [0, 1, 2]
    assert [(t.seconds, t.error) for t in report.vms] == [
        (10.0, None), (None, "thin pool is too full"), (15.0, None)]
    assert seen[-1] == (2, 1, 3)
    assert [m for m, _p in oned.calls].count("one.template.instantiate") == 3
    # one pool read per poll, not one info per VM
    assert [m for m, _p in oned.calls].count("one.vm.info") == 0
    data = report.as_json()
    assert data["running"] == 2 and data["failed"] == 1
    assert data["seconds"] == {"first": 10.0, "median": 15.0, "last": 15.0}


def test_hosts_deploys_round_robin_on_hold(cloud, oned, template):
    tracked = massdeploy.instantiate(cloud, 3, template_id=4, hosts=["host1", "host2"])
    deploys = [p[:2] for m, p in oned.calls if m == "one.vm.deploy"]
    assert deploys == [(0, 0), (1, 1), (2, 0)]
    assert all(p[2] is True for m, p in oned.calls if m == "one.template.instantiate")
    hosts = [ET.fromstring(oned.xml("vm", t.vm_id)).findtext("HISTORY_RECORDS/HISTORY/HOSTNAME")
             for t in tracked]
    assert hosts == ["host1", "host2", "host1"]


def test_vms_of_an_image_and_the_deadline(cloud, oned, template):
    clock = Clock()
    report = massdeploy.deploy(cloud, 2, image_id=0, timeout=20, poll=5, sleep=clock.sleep,
                               clock=clock)
    assert [t.error for t in report.vms] == ["still PENDING/LCM_INIT after 20s"] * 2
    vm = ET.fromstring(oned.xml("vm", 0))
    assert vm.findtext("TEMPLATE/DISK/IMAGE_ID") == "0"


@pytest.mark.parametrize("argv, message", [
    (["--template", "4", "--count", "0"], "--count 0: from 1 to 1000"),
    (["--template", "4", "--count", "2", "--hosts", "host1,nohost"], "no host 'nohost'"),
])
def test_refused_before_anything_is_made(cloud, oned, template, capsys, argv, message):
    assert cli.main(["deploy", *argv], cloud=cloud) == 1
    assert message in capsys.readouterr().err
    assert oned.ids("vm") == []


def test_the_cli_reports_json_and_terminates(cloud, oned, template, capsys, monkeypatch):
    def instantiated(standin, *params):
        vm_id = max(standin.ids("vm"))
        _running(standin, vm_id)
    oned.after("one.template.instantiate", instantiated)

    def terminated(standin, action, vm_id):
        standin.edit("vm", vm_id, "STATE", 6)
    oned.after("one.vm.action", terminated)
    monkeypatch.setattr(massdeploy.time, "sleep", lambda s: None)
    assert cli.main(["deploy", "--template", "4", "--count", "2", "--terminate-after",
                     "--json"], cloud=cloud) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["running"] == 2 and data["terminated"] is True
    assert "deploy [#########################] 2/2 running, 0 failed" in captured.err
    assert [c["host"] for c in data["caches"]] == ["host1"]
    assert ("terminate-hard", 1) in oned.vm_actions


def test_a_running_vm_cannot_be_deployed_again(oned, cloud, template):
    from tm_iscsi.one.errors import OneError
    vm_id = cloud.one.template_instantiate(4, "x")
    _running(oned, vm_id)
    with pytest.raises(OneError, match="Deploy action is not available for state ACTIVE"):
        cloud.one.vm_deploy(vm_id, 0)
