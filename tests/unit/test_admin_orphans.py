"""Orphan detection: what no live VM or image owns, decided from oned's pools and the nodes'
answers, and its removal in dependency order. The rules are in tm_iscsi/admin/ownership.py."""
import json

import pytest

from tm_iscsi.admin import cli, inventory, ownership
from tm_iscsi.errors import DriverError

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    HOST1_IQN, HOST2_IQN, SYSDIR, VG, cloud, image_xml, iqn, lv, nodes, oned, runner, session,
    target, vm_xml)

LIVE_LVS = [lv("img-0", kind="image", image=0, ds=100), lv("img-1", kind="image", image=1),
            lv("vm-0-disk-0", kind="clone", vm=0, disk=0, image=0, ds=100),
            lv("vm-0-disk-2", kind="volatile", vm=0, disk=2),
            lv("vm-0-disk-3", kind="volatile", vm=0, disk=3)]
LIVE_TARGETS = [target(name, HOST1_IQN) for name in ("vm-0-disk-0", "img-1", "vm-0-disk-2",
                                                     "vm-0-disk-3")]
LIVE_LINKS = "".join(f"{SYSDIR}/0/disk.{d}\t/dev/sd{c}\n" for d, c in zip(range(4), "abcd"))


@pytest.fixture
def live(oned, nodes, runner):
    """VM 0 running on host1 with its four disks; images 0 and 1."""
    oned.put_xml(vm_xml(0))
    oned.put_xml(image_xml(0))
    oned.put_xml(image_xml(1))
    nodes.answers["lv-list"] = {"lvs": list(LIVE_LVS)}
    nodes.answers["exports"] = {"targets": list(LIVE_TARGETS)}
    nodes.answers[("host1", "sessions")] = {"sessions": [
        session(n) for n in ("vm-0-disk-0", "img-1", "vm-0-disk-2", "vm-0-disk-3")]}
    runner.answers[("host1", "sh")] = (0, LIVE_LINKS, "")
    return nodes


def _found(cloud):
    findings, problems = inventory.orphans(cloud)
    return [(f.kind, f.node, f.name) for f in findings], findings, problems


def test_what_a_running_vm_and_the_images_use_is_never_an_orphan(cloud, live):
    found, _, problems = _found(cloud)
    assert found == [] and problems == []


def test_a_gone_vms_lv_target_session_and_link_are_orphans(cloud, live, runner):
    live.answers["lv-list"]["lvs"].append(lv("vm-7-disk-0", kind="clone", vm=7, disk=0, image=0))
    live.answers["exports"]["targets"].append(target("vm-7-disk-0", HOST2_IQN))
    live.answers[("host2", "sessions")] = {"sessions": [session("vm-7-disk-0")]}
    runner.answers[("host2", "sh")] = (0, f"{SYSDIR}/7/disk.0\t/dev/sdz\n", "")
    found, findings, _ = _found(cloud)
    assert found == [
        ("link", "host2", f"{SYSDIR}/7/disk.0"),
        ("session", "host2", iqn("vm-7-disk-0")),
        ("target", "storage", iqn("vm-7-disk-0")),
        ("lv", "storage", f"{VG}/vm-7-disk-0")]
    assert {f.vm for f in findings} == {7}
    assert "VM 7 is gone" in findings[-1].reason


def test_an_image_lv_outlives_its_image_only_as_an_orphan(cloud, live, oned):
    oned.remove("image", 0)
    # the running VM's clone still names image 0: it is the VM's, not an orphan
    found, findings, _ = _found(cloud)
    assert found == [("lv", "storage", f"{VG}/img-0")]
    assert findings[0].image == 0 and findings[0].detail["tagged"] is True


def test_an_images_base_may_be_held_by_any_host_while_the_image_exists(cloud, live):
    live.answers["lv-list"]["lvs"].append(lv("img-0-base", kind="base", image=0))
    live.answers["exports"]["targets"].append(target("img-0-base", HOST1_IQN, HOST2_IQN))
    live.answers[("host2", "sessions")] = {"sessions": [session("img-0-base")]}
    assert _found(cloud)[0] == []


def test_an_acl_of_a_host_that_runs_no_vm_of_the_disk_is_an_orphan(cloud, live, oned):
    live.answers["exports"]["targets"][0] = target("vm-0-disk-0", HOST1_IQN, HOST2_IQN)
    live.answers[("host2", "sessions")] = {"sessions": [session("vm-0-disk-0")]}
    found, findings, _ = _found(cloud)
    assert found == [("session", "host2", iqn("vm-0-disk-0")),
                     ("acl", "storage", HOST2_IQN)]
    acl = findings[1]
    assert acl.detail["initiator"] == HOST2_IQN and acl.vm == 0
    assert "ACL of host2" in acl.reason


def test_a_migrating_vm_is_attached_on_both_hosts(cloud, live, oned):
    oned.put_xml(vm_xml(0, state=3, lcm=4, hosts=("host1", "host2")))   # ACTIVE/MIGRATE
    live.answers["exports"]["targets"][0] = target("vm-0-disk-0", HOST1_IQN, HOST2_IQN)
    live.answers[("host2", "sessions")] = {"sessions": [session("vm-0-disk-0")]}
    assert _found(cloud)[0] == []


def test_a_stopped_vm_keeps_its_lvs_but_no_export(cloud, live, oned, runner):
    oned.put_xml(vm_xml(0, state=4, lcm=0))   # STOPPED: the disks went back to the front-end
    live.answers[("host1", "sessions")] = {"sessions": []}
    runner.answers[("host1", "sh")] = (0, "", "")
    found = _found(cloud)[0]
    assert [k for k, _n, _x in found] == ["target"] * 4
    assert not any(k == "lv" for k, _n, _x in found)


def test_nothing_is_concluded_from_a_node_that_did_not_answer(cloud, live):
    live.answers["exports"] = DriverError("cannot reach storage over ssh: timeout")
    live.answers[("host2", "sessions")] = {"sessions": [session("vm-9-disk-0")]}
    found, _, problems = _found(cloud)
    assert found == []
    assert problems == ["storage: exports failed: cannot reach storage over ssh: timeout"]


def test_an_acl_is_kept_when_an_entitled_hosts_initiator_is_unknown(cloud, live):
    live.answers["exports"]["targets"][0] = target("vm-0-disk-0", HOST1_IQN, "iqn.2000-01.x:y")
    live.answers[("host1", "initiator")] = DriverError("host1: no answer")
    assert _found(cloud)[0] == []


def test_lvs_that_are_not_tm_iscsis_are_never_reported(cloud, live):
    live.answers["lv-list"]["lvs"] += [lv("data"), lv("odd", kind="image")]
    found = _found(cloud)[0]
    # "odd" carries the tm_iscsi tag and names no owner; "data" is not ours at all
    assert found == [("lv", "storage", f"{VG}/odd")]


def test_a_session_to_a_target_that_is_gone_is_an_orphan(cloud, live):
    live.answers[("host2", "sessions")] = {"sessions": [session("vm-5-disk-1")]}
    found, findings, _ = _found(cloud)
    assert found == [("session", "host2", iqn("vm-5-disk-1"))]
    assert findings[0].reason == "its target is no longer exported" and findings[0].vm == 5


def test_a_target_whose_lv_is_gone_is_mapped_back_by_its_backstore(cloud, live):
    live.answers["exports"]["targets"].append(target("vm-3-disk-0", HOST1_IQN))
    found, findings, _ = _found(cloud)
    assert found == [("target", "storage", iqn("vm-3-disk-0"))]
    assert findings[0].detail["lv"] == "vm-3-disk-0" and findings[0].vm == 3


def test_clean_removes_in_dependency_order_through_the_node_helper(cloud, live, runner):
    live.answers["lv-list"]["lvs"].append(lv("vm-7-disk-0", kind="clone", vm=7, disk=0))
    live.answers["exports"]["targets"].append(target("vm-7-disk-0", HOST2_IQN))
    live.answers["exports"]["targets"][0] = target("vm-0-disk-0", HOST1_IQN, HOST2_IQN)
    live.answers[("host2", "sessions")] = {"sessions": [session("vm-7-disk-0")]}
    runner.answers[("host2", "sh")] = (0, f"{SYSDIR}/7/disk.0\t/dev/sdz\n", "")
    findings, _ = inventory.orphans(cloud)
    live.calls.clear()
    done = inventory.clean(cloud, findings)
    assert all(error is None for _f, error in done)
    assert [(h, c, a) for h, c, a in live.calls] == [
        ("host2", "path-remove", ("--path", f"{SYSDIR}/7/disk.0")),
        ("host2", "detach", ("--portal", "10.213.77.10:3260", "--iqn", iqn("vm-7-disk-0"))),
        ("storage", "unexport", ("--vg", VG, "--lv", "vm-0-disk-0", "--iqn-base",
                                 "iqn.2026-11.io.tm-iscsi", "--initiator", HOST2_IQN)),
        ("storage", "unexport", ("--vg", VG, "--lv", "vm-7-disk-0", "--iqn-base",
                                 "iqn.2026-11.io.tm-iscsi")),
        ("storage", "lv-remove", ("--vg", VG, "--lv", "vm-7-disk-0", "--require-tag",
                                  "tm_iscsi"))]


def test_a_failed_removal_is_reported_and_the_rest_goes_on(cloud, live, capsys):
    live.answers["lv-list"]["lvs"] += [lv("vm-7-disk-0", vm=7), lv("vm-8-disk-0", vm=8)]
    live.answers["lv-remove"] = lambda host, args: (_ for _ in ()).throw(
        DriverError("storage: vg-one-100/vm-7-disk-0 is still exported")) \
        if "vm-7-disk-0" in args else {"removed": True}
    code = cli.main(["orphans", "--clean"], cloud=cloud)
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAILED: storage: vg-one-100/vm-7-disk-0 is still exported" in out
    assert "vm-8-disk-0" in out and "removed" in out
    assert err.count("\n") == 1 and err.startswith("tm-iscsi: 1 orphan(s) could not be removed")


def test_orphans_json_for_scripts(cloud, live, capsys):
    live.answers["lv-list"]["lvs"].append(lv("vm-7-disk-0", vm=7))
    assert cli.main(["orphans", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["problems"] == []
    assert [(f["kind"], f["name"], f["vm"]) for f in data["findings"]] == [
        ("lv", f"{VG}/vm-7-disk-0", 7)]
    assert live.commands().count(("storage", "lv-remove")) == 0


def test_lv_owner_rules():
    assert ownership.lv_owner("vm-3-disk-1", []) == ("vm", 3)
    assert ownership.lv_owner("x", ["tm_iscsi", "tm_iscsi.vm=4", "tm_iscsi.image=2"]) == ("vm", 4)
    assert ownership.lv_owner("img-2-snap-0", []) == ("image", 2)
    assert ownership.lv_owner("img-22-base", ["tm_iscsi"]) == ("image", 22)
    assert ownership.lv_owner("saved", ["tm_iscsi"]) == ("unknown", None)
    assert ownership.lv_owner("image7", []) is None


def test_a_cache_stack_no_attached_vm_uses_is_an_orphan_and_goes_first(cloud, live):
    """A gone VM's stack (its LV gone too: dropped), a live VM's stack on a host it is not on
    (its LV exists: flushed), and the running VM's own stacks (kept)."""
    live.answers[("host1", "cache-status")] = {"stacks": [
        {"name": "vm-0-disk-0", "mode": "read+writeback", "dirty_blocks": 3},
        {"name": "img-1", "mode": "writeback", "dirty_blocks": 0}]}
    live.answers[("host2", "cache-status")] = {"stacks": [
        {"name": "vm-7-disk-0", "mode": "writeback", "dirty_blocks": 5},
        {"name": "vm-0-disk-2", "mode": "writeback", "dirty_blocks": 1}]}
    found, findings, problems = _found(cloud)
    assert problems == []
    assert found == [("stack", "host2", "vm-0-disk-2"), ("stack", "host2", "vm-7-disk-0")]
    by_name = {f.name: f for f in findings}
    assert by_name["vm-7-disk-0"].vm == 7 and "VM 7 is gone" in by_name["vm-7-disk-0"].reason
    assert "5 dirty blocks will be dropped" in by_name["vm-7-disk-0"].reason
    assert by_name["vm-7-disk-0"].detail["flush"] is False
    assert by_name["vm-0-disk-2"].detail["flush"] is True
    assert "no VM has vm-0-disk-2 attached on host2" in by_name["vm-0-disk-2"].reason

    live.calls.clear()
    inventory.clean(cloud, findings)
    teardowns = [(h, a) for h, c, a in live.calls if c == "stack-teardown"]
    assert teardowns == [("host2", ("--name", "vm-0-disk-2", "--flush")),
                         ("host2", ("--name", "vm-7-disk-0", "--drop"))]


def test_a_host_whose_cache_status_fails_is_a_problem_not_a_verdict(cloud, live):
    live.answers[("host2", "cache-status")] = DriverError("host2: cache-status timed out")
    found, _, problems = _found(cloud)
    assert found == []
    assert problems == ["host2: cache-status failed: host2: cache-status timed out"]


def test_a_stack_older_than_its_disks_recovery_is_dropped_not_flushed(cloud, live):
    """host2 was declared lost and came back: vm-0-disk-2 was recovered from its checkpoint
    since (a new write-back epoch on the LV), so what host2 still caches of it is dropped."""
    from tm_iscsi import protocol
    rows = [dict(row, tags=row["tags"] + [protocol.WB_EPOCH_TAG + "0a0b0c0d0e0f0a0b"])
            if row["lv"] == "vm-0-disk-2" else row for row in LIVE_LVS]
    live.answers["lv-list"] = {"lvs": rows}
    live.answers[("host2", "cache-status")] = {"stacks": [
        {"name": "vm-0-disk-2", "mode": "writeback", "dirty_blocks": 9, "wb_epoch": None}]}
    _found_, findings, _problems = _found(cloud)
    (stack,) = [f for f in findings if f.kind == "stack"]
    assert stack.detail["flush"] is False and "predates the disk's recovery" in stack.reason
    live.answers[("host2", "cache-status")] = {"stacks": [
        {"name": "vm-0-disk-2", "mode": "writeback", "dirty_blocks": 9,
         "wb_epoch": "0a0b0c0d0e0f0a0b"}]}
    _found_, findings, _problems = _found(cloud)
    (stack,) = [f for f in findings if f.kind == "stack"]
    assert stack.detail["flush"] is True
