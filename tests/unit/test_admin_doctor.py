"""`tm-iscsi doctor`: each misconfiguration it knows is named with its fix, judged from the node
helper's answers and the read-only probe's facts; a healthy node passes."""
import json
import os
import xml.etree.ElementTree as ET

import pytest

from tm_iscsi.admin import cli, doctor, probe

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    HOST1_IQN, HOST2_IQN, cloud, iqn, nodes, oned, runner, target)

GOOD_PROBE = {
    "hostname": "n",
    "iscsi": {"startup": "manual", "error": None, "automatic_records": [],
              "iscsid_running": True},
    "lvm": {"global_filter": ["a|^/dev/sdb$|", "r|.*|"], "scan_lvs": "0", "error": None},
    "lio": {"exists": True, "readable": True, "targets": {iqn("vm-0-disk-0"): [HOST1_IQN]}},
    "sudoers": {"uid": 1000, "file": None, "sudo_list": "(root) NOPASSWD: /usr/sbin/tm-iscsi-node"},
    "node_conf": {"ROLES": "storage,host", "VG_NAME": "vg-one-100", "THIN_POOL": "tpool",
                  "CACHE_VG": "vg-tm-iscsi-cache"},
    "host_units": {"systemd": True,
                   "activate": {"unit": "tm-iscsi-activate.service", "enabled": "enabled"},
                   "warm": {"unit": "tm-iscsi-cache-warm.timer", "enabled": "enabled"}},
}
GOOD_HELPER = {"unreachable": None, "pool-status vg-one-100/tpool": {"data_percent": 1.0,
                                                                     "metadata_percent": 2.0},
               "exports": {"targets": [target("vm-0-disk-0", HOST1_IQN)]},
               "initiator": {"iqn": HOST1_IQN},
               "cache-status": {"vg": "vg-tm-iscsi-cache", "present": True,
                                "free_bytes": 5 << 30, "stacks": []}}


def _probe(**changes):
    facts = json.loads(json.dumps(GOOD_PROBE))
    for path, value in changes.items():
        section, key = path.split("__")
        facts[section][key] = value
    return facts


def _judge(helper=None, probe_facts=None, roles=("storage", "host")):
    checks = doctor.judge_node("n1", set(roles), helper or GOOD_HELPER,
                               probe_facts or GOOD_PROBE)
    return {c.check: c for c in checks}


def test_a_healthy_node_passes_every_check():
    checks = _judge()
    assert sorted(checks) == ["boot-activation", "cache-vg", "cache-warm", "helper",
                              "initiator", "iscsid", "lio-saved", "lvm-filter", "node-startup",
                              "pool", "scan-lvs", "sudoers"]
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]


@pytest.mark.parametrize("changes, check, detail, fix", [
    ({"lio__exists": False}, "lio-saved", "saveconfig.json is missing", "targetctl save"),
    ({"lio__targets": {}}, "lio-saved", "not saved: " + iqn("vm-0-disk-0"), "targetctl save"),
    ({"lio__targets": {iqn("vm-0-disk-0"): [HOST2_IQN]}}, "lio-saved", "ACLs differ on",
     "targetctl save"),
    ({"iscsi__startup": "automatic"}, "node-startup", "node.startup = automatic",
     "node.startup = manual"),
    ({"iscsi__automatic_records": ["/etc/iscsi/nodes/t/p/default"]}, "node-startup",
     "log in at boot", "iscsiadm -m node -o update -n node.startup -v manual"),
    ({"iscsi__iscsid_running": False}, "iscsid", "not running", "systemctl enable --now iscsid"),
    ({"lvm__global_filter": ["a|.*|"]}, "lvm-filter", "global_filter is ['a|.*|']",
     "/etc/lvm/lvmlocal.conf"),
    ({"lvm__global_filter": []}, "lvm-filter", "unset", "install.sh --role host,storage"),
    ({"lvm__scan_lvs": "1"}, "scan-lvs", "scan_lvs = 1", "scan_lvs = 0"),
    ({"sudoers__sudo_list": "(root) ALL: /bin/true"}, "sudoers", "does not let the ssh user",
     "/etc/sudoers.d/tm_iscsi"),
])
def test_each_misconfiguration_is_named_with_its_fix(changes, check, detail, fix):
    found = _judge(probe_facts=_probe(**changes))[check]
    assert not found.ok
    assert detail in found.detail and fix in found.fix


def test_sudoers_as_root_is_the_file():
    facts = _probe(sudoers__uid=0, sudoers__sudo_list=None, sudoers__file=False)
    assert _judge(probe_facts=facts)["sudoers"].detail == "/etc/sudoers.d/tm_iscsi is missing"


def test_a_node_that_cannot_be_reached_says_so_and_nothing_else():
    checks = _judge(helper={"unreachable": "cannot reach n1 over ssh: Connection refused"})
    assert list(checks) == ["helper"]
    assert "ssh-copy-id n1" in checks["helper"].fix


def test_a_helper_that_sudo_refuses_points_at_the_installer():
    helper = dict(GOOD_HELPER, initiator={"error": "n1: sudo: a password is required"})
    checks = _judge(helper=helper)
    assert list(checks) == ["helper"]
    assert "sudoers.d/tm_iscsi" in checks["helper"].fix


def test_a_missing_pool_and_initiator():
    helper = dict(GOOD_HELPER, **{
        "pool-status vg-one-100/tpool": {"error": "n1: volume group vg-one-100 does not exist"},
        "initiator": {"error": "n1: cannot read /etc/iscsi/initiatorname.iscsi"}})
    checks = _judge(helper=helper)
    assert "pool-ensure --vg vg-one-100 --pool tpool" in checks["pool"].fix
    assert "InitiatorName=" in checks["initiator"].fix


def test_initiators_must_be_unique_and_recorded():
    checks = doctor.judge_initiators({"host1": HOST1_IQN, "host2": HOST1_IQN},
                                     {"host1": None, "host2": None})
    assert [(c.check, c.node, c.ok) for c in checks] == [("initiator-unique", "host1,host2", False)]
    assert "iscsi-iname" in checks[0].fix
    # a host not checked now still counts, with the name oned recorded for it
    checks = doctor.judge_initiators({"host1": HOST1_IQN}, {"host1": HOST1_IQN,
                                                            "host2": HOST1_IQN})
    assert checks[0].check == "initiator-unique"
    checks = doctor.judge_initiators({"host1": HOST1_IQN, "host2": HOST2_IQN},
                                     {"host1": HOST1_IQN, "host2": "iqn.2000-01.old:x"})
    assert [(c.node, c.ok) for c in checks] == [("host1", True), ("host2", False)]
    assert checks[1].fix == "tm-iscsi-hook record-initiators"


def test_doctor_of_one_node_through_the_cli(cloud, nodes, runner, capsys):
    nodes.answers["initiator"] = {"iqn": HOST1_IQN}
    runner.answers[("host1", "python3")] = (0, json.dumps(_probe(iscsi__startup="automatic")),
                                            "")
    assert cli.main(["doctor", "--node", "host1"], cloud=cloud) == 1
    out, err = capsys.readouterr()
    assert err == "tm-iscsi: 2 problem(s) found\n"
    assert "node-startup        host1  FAIL    node.startup = automatic" in out
    assert "- node-startup (host1): set `node.startup = manual`" in out
    assert "initiator-recorded  host1  FAIL" in out
    # the probe is sent as the program's text, run by the SSH user without sudo
    host, remote, source = runner.calls[0]
    assert (host, remote) == ("host1", "python3 -") and "def collect" in source
    assert nodes.commands() == [("host1", "initiator"), ("host1", "cache-status")]


def test_doctor_json_and_roles_without_oned(cloud, oned, nodes, runner, capsys):
    oned.fail("one.system.version", 0x100, "[one.system.version] User couldn't be "
              "authenticated, aborting call.", times=None)
    assert cli.main(["doctor", "--node", "storage"], cloud=cloud) == 1
    assert "give them with --role storage,host" in capsys.readouterr().err
    runner.answers["python3"] = (0, json.dumps(GOOD_PROBE), "")
    nodes.answers["initiator"] = {"iqn": HOST1_IQN}
    assert cli.main(["doctor", "--node", "n9", "--role", "host", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["problems"] == 0
    assert {c["check"] for c in data["checks"]} == {
        "helper", "initiator", "iscsid", "node-startup", "cache-vg", "boot-activation",
        "cache-warm", "lvm-filter", "scan-lvs", "sudoers"}


def test_the_front_end_checks(cloud, oned, nodes, runner, tmp_path, capsys):
    remotes = tmp_path / "remotes"
    for part in ("tm/iscsi_lvm/clone", "datastore/iscsi_lvm/cp"):
        (remotes / part).parent.mkdir(parents=True, exist_ok=True)
        (remotes / part).write_text("")
    runner.answers["python3"] = (0, json.dumps(GOOD_PROBE), "")
    nodes.answers["exports"] = {"targets": [target("vm-0-disk-0", HOST1_IQN)]}
    nodes.answers["pool-status"] = {"data_percent": 1, "metadata_percent": 1}
    code = cli.main(["doctor", "--json", "--oned-conf", str(tmp_path / "oned.conf"),
                     "--remotes", str(remotes)], cloud=cloud)
    checks = {(c["check"], c["node"]): c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert code == 1
    assert "cannot read" in checks[("oned-conf", "frontend")]["detail"]
    assert checks[("remotes", "frontend")]["ok"]
    assert ("host-probe", "frontend") not in checks   # no KVM probes tree: nothing to check
    (remotes / "im/kvm-probes.d/host/system").mkdir(parents=True)
    cli.main(["doctor", "--json", "--oned-conf", str(tmp_path / "oned.conf"),
              "--remotes", str(remotes)], cloud=cloud)
    again = {(c["check"], c["node"]): c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert "onehost sync --force" in again[("host-probe", "frontend")]["fix"]
    assert checks[("oned", "frontend")]["ok"]
    assert not checks[("hooks", "frontend")]["ok"]
    assert checks[("hooks", "frontend")]["fix"] == "tm-iscsi-hook register"
    # every node oned knows of is checked: the storage node and both hosts
    assert {n for _c, n in checks} >= {"frontend", "storage", "host1", "host2"}
    assert not checks[("initiator-recorded", "host1")]["ok"]


def test_frontend_without_an_iso_tool(cloud, tmp_path):
    checks = doctor.frontend_checks(cloud, str(tmp_path / "none"), str(tmp_path),
                                    which=lambda tool: None)
    iso = next(c for c in checks if c.check == "iso-tool")
    assert not iso.ok and "genisoimage" in iso.fix


def test_the_probe_reads_what_it_can_as_any_user(tmp_path, monkeypatch):
    conf = tmp_path / "iscsid.conf"
    conf.write_text("# node.startup = automatic\nnode.startup = automatic\nnode.startup = manual\n")
    monkeypatch.setattr(probe, "ISCSID_CONF", str(conf))
    monkeypatch.setattr(probe, "NODE_RECORDS", str(tmp_path / "nodes"))
    record = tmp_path / "nodes" / "iqn.x" / "10.0.0.1,3260,1" / "default"
    record.parent.mkdir(parents=True)
    record.write_text("node.startup = automatic\n")
    saved = tmp_path / "saveconfig.json"
    saved.write_text(json.dumps({"targets": [{"wwn": "iqn.t", "tpgs": [
        {"node_acls": [{"node_wwn": "iqn.b"}, {"node_wwn": "iqn.a"}]}]}]}))
    monkeypatch.setattr(probe, "LIO_SAVED", str(saved))
    facts = probe.iscsi()
    assert facts["startup"] == "manual" and facts["automatic_records"] == [str(record)]
    assert probe.lio() == {"exists": True, "readable": True, "targets": {"iqn.t": ["iqn.a",
                                                                                 "iqn.b"]}}
    os.unlink(saved)
    assert probe.lio()["exists"] is False


BOOT = {"systemd": True, "unit": "rtslib-fb-targetctl.service", "enabled": "enabled",
        "restore_file": "/etc/target/saveconfig.json", "same_file": True}


@pytest.mark.parametrize("boot, ok, fragment", [
    (BOOT, True, "restores /etc/target/saveconfig.json"),
    (dict(BOOT, restore_file="/etc/rtslib-fb-target/saveconfig.json", same_file=False), False,
     "ln -sfn /etc/target/saveconfig.json /etc/rtslib-fb-target/saveconfig.json"),
    (dict(BOOT, enabled="disabled"), False, "systemctl enable rtslib-fb-targetctl.service"),
    (dict(BOOT, unit=None, restore_file=None), False, "install targetcli"),
])
def test_the_saved_lio_config_must_be_the_one_restored_at_boot(boot, ok, fragment):
    check = _judge(probe_facts=dict(GOOD_PROBE, lio_boot=boot))["lio-boot"]
    assert check.ok is ok
    assert fragment in (check.detail if ok else check.fix)


def test_without_systemd_the_boot_restore_is_not_judged():
    assert "lio-boot" not in _judge(probe_facts=dict(GOOD_PROBE, lio_boot=dict(
        BOOT, systemd=False, same_file=False)))


def test_the_probe_finds_the_file_a_unit_restores(tmp_path, monkeypatch):
    targetctl = tmp_path / "targetctl"
    targetctl.write_text('default_save_file = "/etc/rtslib-fb-target/saveconfig.json"\n')
    monkeypatch.setattr(probe, "TARGETCTL", str(targetctl))
    assert probe._restore_file(["[Service]\nExecStart=/usr/bin/targetctl restore\n"]) == \
        "/etc/rtslib-fb-target/saveconfig.json"
    dropin = "[Service]\nExecStart=\nExecStart=/usr/bin/targetctl restore /etc/target/x.json\n"
    assert probe._restore_file(["ExecStart=/usr/bin/targetctl restore\n", dropin]) == \
        "/etc/target/x.json"
    assert probe._restore_file(["ExecStart=/bin/true\n"]) is None


@pytest.mark.parametrize("changes, check, detail", [
    ({"host_units__activate": {"unit": "tm-iscsi-activate.service", "enabled": "disabled"}},
     "boot-activation", "tm-iscsi-activate.service is disabled"),
    ({"host_units__warm": {"unit": "tm-iscsi-cache-warm.timer", "enabled": "not-found"}},
     "cache-warm", "tm-iscsi-cache-warm.timer is not-found"),
    ({"host_units__systemd": False,
      "host_units__warm": {"file": "/etc/cron.d/tm-iscsi-cache-warm", "present": False}},
     "cache-warm", "/etc/cron.d/tm-iscsi-cache-warm is missing (no systemd)"),
])
def test_host_units_missing_are_named(changes, check, detail):
    checks = _judge(probe_facts=_probe(**changes), roles=("host",))
    assert not checks[check].ok and detail in checks[check].detail
    assert "install.sh --role host" in checks[check].fix


def test_a_host_without_its_cache_vg_fails():
    helper = dict(GOOD_HELPER, **{"cache-status": {"vg": "vg-tm-iscsi-cache", "present": False}})
    checks = _judge(helper=helper, roles=("host",))
    assert not checks["cache-vg"].ok and "does not exist" in checks["cache-vg"].detail


def test_storage_checks_without_oned_use_the_node_conf_pool(cloud, oned, nodes, runner, capsys):
    """--role storage when oned cannot be asked: the thin pool named in the node's node.conf."""
    oned.fail("one.system.version", 0x100, "[one.system.version] User couldn't be "
              "authenticated, aborting call.", times=None)
    runner.answers["python3"] = (0, json.dumps(GOOD_PROBE), "")
    nodes.answers["pool-status"] = {"data_percent": 3.0, "metadata_percent": 1.0}
    cli.main(["doctor", "--node", "storage", "--role", "storage", "--json"], cloud=cloud)
    data = json.loads(capsys.readouterr().out)
    pools = [c for c in data["checks"] if c["check"] == "pool"]
    assert pools and pools[0]["ok"] and "vg-one-100/tpool" in pools[0]["detail"]
    assert ("storage", "pool-status", ("--vg", "vg-one-100", "--pool", "tpool")) in nodes.calls


def test_the_probe_searches_the_sbin_directories_too():
    from tm_iscsi.admin import probe
    assert {"/usr/sbin", "/sbin"} <= set(probe.SEARCH_PATH.split(probe.os.pathsep))


def test_the_probe_finds_sbin_tools_outside_the_ssh_path(monkeypatch, tmp_path):
    """ssh gives oneadmin a PATH without /usr/sbin, where lvmconfig lives."""
    from tm_iscsi.admin import probe
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "lvmconfig").write_text("#!/bin/sh\n")
    (sbin / "lvmconfig").chmod(0o755)
    monkeypatch.setattr(probe, "SEARCH_PATH", probe.os.pathsep.join(
        ["/nonexistent-bin", str(sbin)]))
    assert probe.which("lvmconfig") == str(sbin / "lvmconfig")


def test_the_saved_lio_config_is_compared_from_the_helper_when_oneadmin_cannot_read_it():
    """/etc/target/saveconfig.json is root's (0600): the helper's `exports` reports it."""
    probe = _probe(lio__readable=False, lio__targets=None)
    helper = dict(GOOD_HELPER, exports={
        "targets": [target("vm-0-disk-0", HOST1_IQN)],
        "saved": {"exists": True, "readable": True, "targets": {iqn("vm-0-disk-0"): [HOST1_IQN]}}})
    checks = _judge(helper=helper, probe_facts=probe)
    assert checks["lio-saved"].ok and "matches the 1 live targets" in checks["lio-saved"].detail
    helper["exports"]["saved"]["targets"] = {}
    assert not _judge(helper=helper, probe_facts=probe)["lio-saved"].ok


@pytest.mark.parametrize("found, ok", [
    ({"unit": "tm-iscsi-checkpoint.timer", "enabled": "disabled"}, False),
    ({"unit": "tm-iscsi-checkpoint.timer", "enabled": "enabled"}, True),
    ({"file": "/etc/cron.d/tm-iscsi-checkpoint", "present": False}, False),
])
def test_write_back_datastores_need_the_checkpoint_timer(cloud, oned, tmp_path, found, ok):
    def mode(value):
        def change(root):
            node = root.find("TEMPLATE/CACHE_MODE")
            if node is None:
                node = ET.SubElement(root.find("TEMPLATE"), "CACHE_MODE")
            node.text = value
        return change
    for ds_id in (100, 101):
        oned.edit_with("datastore", ds_id, mode("read"))
    checks = doctor.frontend_checks(cloud, str(tmp_path / "none"), str(tmp_path),
                                    unit_state=lambda unit, fallback: found)
    assert not [c for c in checks if c.check == "checkpoints"]     # no write-back: no need
    oned.edit_with("datastore", 100, mode("read+writeback"))
    cloud._cached.clear()
    checks = doctor.frontend_checks(cloud, str(tmp_path / "none"), str(tmp_path),
                                    unit_state=lambda unit, fallback: found)
    (check,) = [c for c in checks if c.check == "checkpoints"]
    assert check.ok is ok
    assert ok or "install.sh" in check.fix
