"""The VM DONE hook: what a terminated VM left behind, only that VM's, reported and removed with
--clean; a VM that is not DONE is refused."""
import base64
import json

import pytest

from tm_iscsi.errors import DriverError
from vmm_hooks import cli, leftovers

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    HOST1_IQN, HOST2_IQN, SYSDIR, VG, cloud, image_xml, iqn, lv, nodes, oned, runner, session,
    target, vm_xml)


@pytest.fixture
def done_vm3(oned, nodes, runner):
    """VM 3 (the captured VM's disks) is DONE after running on host1 then host2; its clone and
    a volatile LV, the clone's target with host2's ACL, host2's session and link were left.
    VM 4 (gone too) left an LV: not VM 3's business. VM 0 runs on host1 with one clone."""
    oned.put_xml(vm_xml(3, state=6, lcm=0, hosts=("host1", "host2")))
    oned.put_xml(vm_xml(0, disks=(0,)))
    oned.put_xml(image_xml(0))
    oned.put_xml(image_xml(1))
    nodes.answers["lv-list"] = {"lvs": [
        lv("img-0", image=0), lv("img-1", image=1), lv("vm-0-disk-0", vm=0),
        lv("vm-3-disk-0", kind="clone", vm=3, disk=0, image=0),
        lv("vm-3-disk-2", kind="volatile", vm=3, disk=2), lv("vm-4-disk-0", vm=4)]}
    nodes.answers["exports"] = {"targets": [
        target("vm-0-disk-0", HOST1_IQN), target("vm-3-disk-0", HOST2_IQN),
        target("img-1", HOST2_IQN)]}
    nodes.answers[("host2", "sessions")] = {"sessions": [session("vm-3-disk-0"),
                                                         session("img-1")]}
    nodes.answers[("host1", "sessions")] = {"sessions": [session("vm-0-disk-0")]}
    runner.answers[("host2", "sh")] = (0, f"{SYSDIR}/3/disk.0\t/dev/sdb\n", "")
    return oned


def test_leftovers_of_a_done_vm_are_reported(cloud, done_vm3, nodes, capsys):
    xml = done_vm3.xml("vm", 3)
    assert cli.main(["leftovers", base64.b64encode(xml.encode()).decode()], cloud=cloud) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "NODE", "NAME", "VM", "WHY"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["link", "host2", f"{SYSDIR}/3/disk.0"],
        ["session", "host2", iqn("img-1")],
        ["session", "host2", iqn("vm-3-disk-0")],
        ["target", "storage", iqn("img-1")],
        ["target", "storage", iqn("vm-3-disk-0")],
        ["lv", "storage", f"{VG}/vm-3-disk-0"],
        ["lv", "storage", f"{VG}/vm-3-disk-2"]]
    # only the hosts of its history are asked; nothing is removed without --clean
    assert {h for h, c in nodes.commands() if c == "sessions"} == {"host1", "host2"}
    assert not {"lv-remove", "unexport", "detach", "path-remove"} & {c for _h, c in
                                                                     nodes.commands()}


def test_the_persistent_image_itself_is_never_a_leftover(cloud, done_vm3):
    found, _ = leftovers.find(cloud, cloud.one.vm_info(3))
    assert f"{VG}/img-1" not in [f.name for f in found if f.kind == "lv"]
    assert f"{VG}/vm-4-disk-0" not in [f.name for f in found]


def test_clean_removes_them(cloud, done_vm3, nodes, capsys):
    assert cli.main(["leftovers", "--vm", "3", "--clean", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(f["removed"] for f in data["findings"]) and len(data["findings"]) == 7
    removed = [(c, a[-1] if c != "detach" else a[-1]) for _h, c, a in nodes.calls
               if c in ("path-remove", "detach", "unexport", "lv-remove")]
    assert removed == [("path-remove", f"{SYSDIR}/3/disk.0"), ("detach", iqn("img-1")),
                       ("detach", iqn("vm-3-disk-0")), ("unexport", "iqn.2026-11.io.tm-iscsi"),
                       ("unexport", "iqn.2026-11.io.tm-iscsi"), ("lv-remove", "tm_iscsi"),
                       ("lv-remove", "tm_iscsi")]


def test_a_vm_that_left_nothing(cloud, oned, capsys):
    oned.put_xml(vm_xml(3, state=6, lcm=0))
    assert cli.main(["leftovers", "--vm", "3"], cloud=cloud) == 0
    assert capsys.readouterr().out == "VM 3 left nothing behind\n"


def test_a_vm_that_is_not_done_is_refused(cloud, oned, capsys):
    oned.put_xml(vm_xml(3))
    assert cli.main(["leftovers", "--vm", "3", "--clean"], cloud=cloud) == 1
    assert capsys.readouterr().err == ("tm-iscsi-hook: VM 3 is ACTIVE, not DONE: what it has "
                                       "is in use\n")
    with pytest.raises(DriverError):
        leftovers.find(cloud, cloud.one.vm_info(3))


def test_a_shared_image_loses_only_this_vms_acl(cloud, done_vm3, oned):
    oned.put_xml(vm_xml(0))   # VM 0 now uses img-1 too, on host1
    found, _ = leftovers.find(cloud, cloud.one.vm_info(3))
    img1 = [(f.kind, f.name) for f in found if iqn("img-1") in (f.name, f.detail.get("iqn"))]
    assert img1 == [("session", iqn("img-1")), ("acl", HOST2_IQN)]


def test_every_host_of_the_history_is_asked_not_only_the_events(cloud, done_vm3, nodes, capsys):
    event = vm_xml(3, state=6, lcm=0, hosts=("host2",))   # the event has the last placement
    assert cli.main(["leftovers", base64.b64encode(event.encode()).decode()], cloud=cloud) == 0
    assert {h for h, c in nodes.commands() if c == "sessions"} == {"host1", "host2"}
    done_vm3.remove("vm", 3)   # oned lost it: the event's own XML is used
    assert cli.main(["leftovers", base64.b64encode(event.encode()).decode()], cloud=cloud) == 0
