"""`tm-iscsi checkpoint` and `tm-iscsi host-lost` from the front-end, with the nodes replaced by
a recorder: the four calls of a checkpoint in their order, what makes one invalid (and that the
previous checkpoint is then kept), which VMs are due, the refusals of host-lost before any
change, the fence hook that runs it when the datastore says so, and what status shows."""
import json
import time
import xml.etree.ElementTree as ET

import pytest

from tm_iscsi import dsconf, protocol
from tm_iscsi.admin import checkpoint, cli
from tm_iscsi.errors import DriverError
from vmm_hooks import cli as hook_cli

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    HOST1_IQN, VG, cloud, host_xml, nodes, oned, runner, target, vm_xml)

CLONE = "vm-0-disk-0"
CHECKPOINT_CALLS = [("host1", "checkpoint-drain"), ("storage", "checkpoint-take"),
                    ("host1", "checkpoint-resume"), ("storage", "checkpoint-commit")]


def _set(oned, ds_id, **attrs):
    def change(root):
        template = root.find("TEMPLATE")
        for name, value in attrs.items():
            node = template.find(name)
            if node is None:
                node = ET.SubElement(template, name)
            node.text = str(value)
    oned.edit_with("datastore", ds_id, change)


@pytest.fixture
def running(oned, nodes):
    _set(oned, 100, CACHE_MODE="read+writeback")
    _set(oned, 101, CACHE_MODE="read+writeback")
    oned.put_xml(vm_xml(0, disks=(0,)))
    nodes.answers.update({
        "checkpoint-drain": {"stacks": [{"name": CLONE, "dirty_before_blocks": 32,
                                         "block_bytes": 65536, "was_writeback": True}],
                             "held_at": None},
        "checkpoint-take": {"vg": VG, "disks": [{"lv": CLONE, "snapshot": CLONE + "-ckpt-next",
                                                 "cut_at": 1000.5, "seconds": 0.4}]},
        "checkpoint-resume": {"valid": True, "stacks": [{"name": CLONE, "valid": True,
                                                         "held": False}]},
        "checkpoint-commit": {"vg": VG, "disks": [{"lv": CLONE, "committed": True}]},
    })
    return nodes


def _request(nodes, command):
    (args,) = nodes.args_of(command)
    return json.loads(args[args.index("--request") + 1])


def _ckpt_row(host, at):
    return {"lv": CLONE + "-ckpt", "size_bytes": 64 << 20, "origin": CLONE,
            "tags": ["tm_iscsi", "tm_iscsi.kind=checkpoint", protocol.CKPT_HOST_TAG + host,
                     f"{protocol.CKPT_AT_TAG}{int(at)}"]}


def test_a_checkpoint_is_drain_take_resume_commit(cloud, running, capsys):
    assert cli.main(["checkpoint", "0", "--json"], cloud=cloud) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c for c in running.commands() if c[1].startswith("checkpoint")] == CHECKPOINT_CALLS
    drain = _request(running, "checkpoint-drain")
    assert drain["stacks"] == [CLONE] and drain["hold"] is False
    assert _request(running, "checkpoint-resume")["token"] == drain["token"]
    assert _request(running, "checkpoint-take") == {"vg": VG, "host": "host1", "lvs": [CLONE],
                                                    "max_fill": 90}
    assert _request(running, "checkpoint-commit")["valid"] is True
    (done,) = report["checkpoints"]
    assert done["disks"] == [{"disk_id": 0, "lv": CLONE, "drained_mib": 2.0, "cut_at": 1000.5}]
    assert done["stall_seconds"] == 0.4 and report["failed"] == []


def test_several_write_back_disks_are_held_and_cut_at_one_instant(cloud, running, oned):
    oned.put_xml(vm_xml(0))     # the clone, a volatile disk and a persistent image
    found = checkpoint.running_writeback_vms(cloud, {0})[0]
    assert len(found.disks) > 1
    running.answers["checkpoint-resume"] = {"valid": True, "stacks": [
        {"name": d.volume.lv, "valid": True, "held": True} for d in found.disks]}
    assert checkpoint.checkpoint(cloud, found)["held"] is True
    assert _request(running, "checkpoint-drain")["hold"] is True


def test_a_hold_that_did_not_last_is_no_checkpoint(cloud, running, oned):
    oned.put_xml(vm_xml(0))
    found = checkpoint.running_writeback_vms(cloud, {0})[0]
    running.answers["checkpoint-resume"] = {"valid": True, "stacks": [
        {"name": d.volume.lv, "valid": True, "held": d.disk_id != 0} for d in found.disks]}
    with pytest.raises(DriverError, match="not cut at one clean instant"):
        checkpoint.checkpoint(cloud, found)
    assert _request(running, "checkpoint-commit")["valid"] is False


def test_a_stack_another_action_changed_makes_it_invalid_and_keeps_the_last(cloud, running,
                                                                            capsys):
    running.answers["checkpoint-resume"] = {"valid": False, "stacks": [
        {"name": CLONE, "valid": False, "held": False}]}
    assert cli.main(["checkpoint", "0"], cloud=cloud) == 1
    assert _request(running, "checkpoint-commit")["valid"] is False
    assert "VM 0 on host1: NOT checkpointed: VM 0: the checkpoint was not cut" in \
        capsys.readouterr().out


def test_a_failed_take_still_resumes_and_drops_the_snapshot(cloud, running):
    running.answers["checkpoint-take"] = DriverError("storage: thin pool vg-one-100/tpool is "
                                                     "too full")
    found = checkpoint.running_writeback_vms(cloud, {0})[0]
    with pytest.raises(DriverError, match="too full"):
        checkpoint.checkpoint(cloud, found)
    assert [c for c in running.commands() if c[1].startswith("checkpoint")] == CHECKPOINT_CALLS
    assert _request(running, "checkpoint-commit")["valid"] is False


def test_a_failed_drain_puts_the_drained_stacks_back(cloud, running):
    running.answers["checkpoint-drain"] = DriverError("host1: flush timed out")
    found = checkpoint.running_writeback_vms(cloud, {0})[0]
    with pytest.raises(DriverError, match="timed out"):
        checkpoint.checkpoint(cloud, found)
    assert running.commands()[-2:] == [("host1", "checkpoint-drain"),
                                        ("host1", "checkpoint-resume")]


@pytest.mark.parametrize("ckpt, minutes, is_due", [
    (None, None, True),                           # none yet
    (("host1", -60), None, False),                # a minute old, every 5 minutes
    (("host1", -400), None, True),
    (("host2", -60), None, True),                 # cut for the host it ran on before
    (("host1", -400), 0, False),                  # WRITEBACK_CHECKPOINT = 0: never
    (("host1", -200), 3, True),
])
def test_which_vms_are_due(cloud, running, oned, ckpt, minutes, is_due):
    if minutes is not None:
        _set(oned, 101, WRITEBACK_CHECKPOINT=minutes)
    now = time.time()
    running.answers["lv-list"] = {"vg": VG, "lvs": [_ckpt_row(ckpt[0], now + ckpt[1])]
                                  if ckpt else []}
    assert [f.vm.id for f in checkpoint.due(cloud, now)] == ([0] if is_due else [])


def test_a_vm_that_is_not_running_is_not_checkpointed(cloud, running, oned, capsys):
    oned.put_xml(vm_xml(0, lcm=0, state=8, disks=(0,)))    # POWEROFF
    assert checkpoint.due(cloud) == []
    assert cli.main(["checkpoint", "0"], cloud=cloud) != 0
    assert "not running with write-back disks" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "x", "1441", "99999999"])
def test_writeback_checkpoint_is_checked(cloud, oned, value):
    _set(oned, 101, WRITEBACK_CHECKPOINT=value)
    entry = next(e for e in cloud.datastores() if e.id == 101)
    assert entry.config is None and "WRITEBACK_CHECKPOINT" in entry.error


def test_the_default_interval_and_host_loss(cloud):
    cfg = cloud.datastore(101)
    assert cfg.writeback_checkpoint_min == dsconf.CHECKPOINT_MIN_DEFAULT
    assert cfg.on_host_loss == "refuse"


# -- host-lost ----------------------------------------------------------------------------------

@pytest.fixture
def lost_host1(oned, nodes):
    oned.put_document(host_xml(0, "host1", state=3, vm_ids=(0,), initiator=HOST1_IQN))
    nodes.answers["host-lost"] = {"vg": VG, "host": "host1", "disks": [
        {"lv": CLONE, "recovered": True, "checkpoint": CLONE + "-ckpt", "cut_at": 100,
         "age_seconds": 42}]}
    return nodes


def _changes(nodes):
    return [c for c in nodes.commands() if c[1] not in ("exports", "lv-list")]


@pytest.mark.parametrize("state, initiator, exported, refusal", [
    (2, HOST1_IQN, False, "is MONITORED in OpenNebula"),
    (3, None, False, "no recorded ISCSI_INITIATOR"),
    (3, HOST1_IQN, True, "is not fenced"),
])
def test_host_lost_is_refused_before_any_change(cloud, oned, lost_host1, capsys, state,
                                                initiator, exported, refusal):
    oned.put_document(host_xml(0, "host1", state=state, vm_ids=(0,), initiator=initiator))
    if exported:
        lost_host1.answers["exports"] = {"targets": [target(CLONE, HOST1_IQN)]}
    assert cli.main(["host-lost", "host1"], cloud=cloud) != 0
    err = capsys.readouterr().err
    assert refusal in err and err.count("\n") == 1
    assert _changes(lost_host1) == []


def test_host_lost_when_fenced_reports_the_loss_window(cloud, lost_host1, capsys):
    assert cli.main(["host-lost", "host1"], cloud=cloud) == 0
    out = capsys.readouterr().out
    assert "back to checkpoint" in out and "42s" in out
    assert _changes(lost_host1) == [("storage", "host-lost")]
    assert _request(lost_host1, "host-lost")["host"] == "host1"


def test_host_lost_force_skips_the_checks(cloud, oned, lost_host1, capsys):
    oned.put_document(host_xml(0, "host1", state=2, vm_ids=(0,)))
    assert cli.main(["host-lost", "host1", "--force", "--without-checkpoint"], cloud=cloud) == 0
    assert _request(lost_host1, "host-lost")["without_checkpoint"] is True


def test_a_disk_without_checkpoint_fails_host_lost(cloud, lost_host1, capsys):
    lost_host1.answers["host-lost"] = {"vg": VG, "host": "host1", "disks": [
        {"lv": CLONE, "recovered": False, "reason": "no checkpoint of host1's write-back data"}]}
    assert cli.main(["host-lost", "host1"], cloud=cloud) == 1
    assert "NOT recovered: no checkpoint" in capsys.readouterr().out


def test_the_fence_hook_declares_the_host_lost_when_the_datastore_says_so(cloud, oned,
                                                                          lost_host1, capsys):
    assert hook_cli.main(["fence", "--host", "host1"], cloud=cloud) == 0
    assert ("storage", "host-lost") not in lost_host1.commands()
    _set(oned, 101, WRITEBACK_ON_HOST_LOSS="checkpoint")
    cloud._cached.clear()
    assert hook_cli.main(["fence", "--host", "host1"], cloud=cloud) == 0
    assert ("storage", "host-lost") in lost_host1.commands()
    assert "back to its checkpoint of 42 s ago" in capsys.readouterr().out


def test_cache_stats_shows_dirty_mib_and_the_checkpoint_age(cloud, running, capsys):
    now = time.time()
    running.answers.update({
        ("host1", "cache-status"): {"vg": "tmi-cache", "present": True, "free_bytes": 1 << 30,
                                    "stacks": [{"name": CLONE, "mode": "read+writeback",
                                                "dirty_blocks": 48, "dirty_bytes": 48 << 16}]},
        "lv-list": {"vg": VG, "lvs": [_ckpt_row("host1", now - 150)]}})
    assert cli.main(["cache-stats", "--json"], cloud=cloud) == 0
    (row,) = json.loads(capsys.readouterr().out)["stacks"]
    assert row["dirty_mib"] == 3.0 and 149 <= row["checkpoint_age_s"] <= 160
    assert cli.main(["cache-stats"], cloud=cloud) == 0
    table = capsys.readouterr().out
    assert "WRITE-BACK DISKS" in table and "3.0 MiB" in table and "2m ago" in table
