"""`tm-iscsi` against the lab: status shows the pool, exports and sessions the driver made;
orphans finds an LV and a target made by hand and --clean removes exactly those; doctor passes
the checks a prepared lab meets and names the fix for each thing the test breaks."""
import json

import pytest

from harness.cloud import IMAGE_VG, SYSDIR, sha_of_file
from tests.lab.test_hooks import (  # noqa: F401  (the cloud fixture)
    HOST1, cloud, deploy_clone, run_tool, target_name)
from harness.documents import image_xml

ISCSID_CONF = "/etc/iscsi/iscsid.conf"


def _json(result):
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_status_and_orphans(cloud):
    disk = deploy_clone(cloud, 0, "host1")
    cloud.oned.put_xml(vm_xml_running(0))
    cloud.oned.put_xml(image_xml(0))
    # leaked by hand: a clone of a VM 8 oned never heard of, exported to host1; and an LV that
    # is not tm_iscsi's at all, which must never be reported
    cloud.lab.sh("storage", f"lvcreate -q -V 8M -T {IMAGE_VG}/tpool -n vm-8-disk-0 "
                            "--addtag tm_iscsi --addtag tm_iscsi.vm=8 && "
                            f"lvcreate -q -V 8M -T {IMAGE_VG}/tpool -n keepme")
    cloud.lab.node_helper("storage", "export", "--vg", IMAGE_VG, "--lv", "vm-8-disk-0",
                          "--initiator", HOST1)

    status = run_tool(cloud, "tm_iscsi.admin", "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    pool = data["pools"][0]
    assert (pool["storage"], pool["vg"], pool["datastores"]) == ("storage", IMAGE_VG, [100, 101])
    assert 0 < pool["data_percent"] < 100 and pool["data_total_bytes"] > 20 << 30
    exports = {e["iqn"]: e for e in data["exports"]}
    assert exports[target_name("vm-0-disk-0")]["initiators"] == [{"iqn": HOST1, "host": "host1"}]
    assert exports[target_name("vm-0-disk-0")]["sessions"] == ["host1"]
    hosts = {h["name"]: h for h in data["hosts"]}
    assert [s["iqn"] for s in hosts["host1"]["sessions"]] == [target_name("vm-0-disk-0")]
    assert hosts["host2"]["sessions"] == [] and hosts["host2"]["initiator"].endswith(":host2")
    table = run_tool(cloud, "tm_iscsi.admin", "status")
    assert table.returncode == 0 and "THIN POOLS" in table.stdout

    found = _json(run_tool(cloud, "tm_iscsi.admin", "orphans", "--json"))
    assert [(f["kind"], f["name"]) for f in found["findings"]] == [
        ("target", target_name("vm-8-disk-0")), ("lv", f"{IMAGE_VG}/vm-8-disk-0")]
    assert found["problems"] == []

    clean = run_tool(cloud, "tm_iscsi.admin", "orphans", "--clean")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.count("removed") == 2
    lvs = cloud.lvs()
    assert "vm-8-disk-0" not in lvs and {"keepme", "vm-0-disk-0", "img-0"} <= set(lvs)
    assert [t["iqn"] for t in cloud.exports()] == [target_name("vm-0-disk-0")]
    assert cloud.sha_on("host1", disk, 5) == sha_of_file(cloud.raw, 5)
    again = run_tool(cloud, "tm_iscsi.admin", "orphans")
    assert again.returncode == 0 and again.stdout.startswith("no orphans")


def vm_xml_running(vm_id):
    from harness.documents import vm_xml
    return vm_xml(vm_id, state=3, lcm=3, hosts=("host1",), disks=(0,))


def _doctor(cloud, node):
    data = _json(run_tool(cloud, "tm_iscsi.admin", "doctor", "--node", node, "--json"))
    return {c["check"]: c for c in data["checks"]}


@pytest.fixture
def iscsid_conf(cloud):
    saved = cloud.lab.sh("host1", f"cat {ISCSID_CONF}")
    yield
    cloud.lab.sh("host1", f"cat > {ISCSID_CONF}", input=saved.encode())


def test_doctor_names_the_fix_for_what_the_test_breaks(cloud, iscsid_conf):
    deploy_clone(cloud, 0, "host1")   # a live export, so LIO has a saved config to compare
    storage, host1 = _doctor(cloud, "storage"), _doctor(cloud, "host1")
    for check in ("helper", "pool", "lio-saved"):
        assert storage[check]["ok"], storage[check]
    for check in ("helper", "initiator", "iscsid", "node-startup"):
        assert host1[check]["ok"], host1[check]
    assert "matches the 1 live targets" in storage["lio-saved"]["detail"]

    # break two things an administrator could: the saved LIO config and the iSCSI startup mode
    cloud.lab.sh("storage", "rm /etc/target/saveconfig.json")
    cloud.lab.sh("host1", f"sed -i 's/^node.startup = manual/node.startup = automatic/' "
                          f"{ISCSID_CONF}")
    broken = run_tool(cloud, "tm_iscsi.admin", "doctor", "--node", "storage")
    assert broken.returncode == 1
    assert broken.stderr.startswith("tm-iscsi: ") and broken.stderr.count("\n") == 1
    assert ("- lio-saved (storage): on storage, as root: targetctl save "
            "/etc/target/saveconfig.json") in broken.stdout
    lio = _doctor(cloud, "storage")["lio-saved"]
    assert not lio["ok"] and "saveconfig.json is missing" in lio["detail"]
    startup = _doctor(cloud, "host1")["node-startup"]
    assert not startup["ok"] and startup["detail"] == \
        "node.startup = automatic in /etc/iscsi/iscsid.conf"
    assert "set `node.startup = manual` in /etc/iscsi/iscsid.conf on host1" in startup["fix"]

    # the fixes named, applied: both checks pass again
    cloud.lab.sh("storage", "targetctl save /etc/target/saveconfig.json")
    cloud.lab.sh("host1", f"sed -i 's/^node.startup = automatic/node.startup = manual/' "
                          f"{ISCSID_CONF}")
    assert _doctor(cloud, "storage")["lio-saved"]["ok"]
    assert _doctor(cloud, "host1")["node-startup"]["ok"]
