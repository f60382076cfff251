"""The hooks on the real kernel: the HOST ERROR hook fences a host (its ACLs go, its session
fails, it cannot log in again) while the other host keeps reading its disk; the VM DONE hook
finds what a VM left behind (an LV, its target and ACL, a host's session and disk link, made by
hand here) and removes it with --clean. The hooks run as oned would run them: a separate
process given the base64 object XML, talking to the oned stand-in and to the nodes over SSH."""
import base64
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from harness.cloud import IMAGE_VG, SYSDIR, Cloud, sha_of_file
from harness.documents import host_xml, vm_xml

HOST1 = "iqn.2026-11.lab.tm-iscsi:host1"
HOST2 = "iqn.2026-11.lab.tm-iscsi:host2"
IMAGE_MIB = 16


def run_tool(cloud, module, *args, timeout=300):
    """`python -m <module> ARGS` as a separate process in the driver's environment."""
    return subprocess.run([sys.executable, "-m", module, *[str(a) for a in args]],
                          env={**os.environ, **cloud.env}, capture_output=True, text=True,
                          timeout=timeout)


def b64(xml):
    return base64.b64encode(xml.encode()).decode()


def target_name(lv):
    return f"iqn.2026-11.io.tm-iscsi:{IMAGE_VG}.{lv}"


@pytest.fixture
def cloud(lab, tmp_path):
    """Storage prepared, image 0 imported, both hosts known to oned; the image datastore's disks
    get no cache layer (what is proven here is the LUN access, not the caches)."""
    with Cloud.ready(lab, tmp_path) as c:
        c.set_template_attr("datastore", 100, "CACHE_MODE", "none")
        c.import_image(IMAGE_MIB, "hooks")
        c.oned.put_document(host_xml(0, "host1", vm_ids=(0,)))
        c.oned.put_document(host_xml(1, "host2", vm_ids=(1,)))
        yield c


def deploy_clone(cloud, vm_id, host):
    """VM `vm_id` placed on `host` with the image's clone as disk 0, deployed by the real TM."""
    cloud.oned.put_xml(vm_xml(vm_id, hosts=(host,), disks=(0,)))
    result = cloud.tm_action(f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 "
                             f"{host}:/var/lib/one//datastores/101/{vm_id}/disk.0 {vm_id} 100")
    assert result.success, result.stderr
    return f"{SYSDIR}/{vm_id}/disk.0"


def _initiators(cloud, lv):
    return next((t["initiators"] for t in cloud.exports() if t["iqn"] == target_name(lv)), None)


def _session_state(cloud, host, lv):
    return next((s["state"] for s in cloud.sessions(host) if s["iqn"] == target_name(lv)), None)


def test_fence_revokes_a_failed_hosts_access_and_spares_the_other(cloud):
    disk1 = deploy_clone(cloud, 0, "host1")
    disk2 = deploy_clone(cloud, 1, "host2")
    expected = sha_of_file(cloud.raw, 5)
    assert cloud.sha_on("host1", disk1, 5) == expected
    cloud.oned.put_document(host_xml(0, "host1", state=3, vm_ids=(0,)))   # ERROR

    # as oned runs it: the host's XML in base64; no ISCSI_INITIATOR recorded yet
    hook = run_tool(cloud, "vmm_hooks", "fence", b64(cloud.oned.xml("host", 0)))
    assert hook.returncode == 0, hook.stderr
    assert f"storage: revoked {HOST1} on 1 target(s):" in hook.stdout
    assert target_name("vm-0-disk-0") in hook.stdout
    assert f"<ISCSI_INITIATOR>{HOST1}</ISCSI_INITIATOR>" in cloud.oned.xml("host", 0)

    # host1 lost its ACL and its session; host2 kept both and still reads its disk
    assert _initiators(cloud, "vm-0-disk-0") == []
    assert _initiators(cloud, "vm-1-disk-0") == [HOST2]
    deadline = time.monotonic() + 30
    while _session_state(cloud, "host1", "vm-0-disk-0") == "LOGGED_IN":
        assert time.monotonic() < deadline, "host1's session is still logged in"
        time.sleep(1)
    assert cloud.sha_on("host2", disk2, 5) == expected
    assert _session_state(cloud, "host2", "vm-1-disk-0") == "LOGGED_IN"

    # host1 cannot come back on its own: a new login to the LUN is refused
    iqn = target_name("vm-0-disk-0")
    cloud.lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn)
    serial = next(t["serial"] for t in cloud.exports() if t["iqn"] == iqn)
    again = cloud.lab.node_helper("host1", "attach", "--portal", "storage", "--iqn", iqn,
                                  "--serial", serial, "--timeout", "10", check=False)
    assert again.returncode != 0 and "authorization failure" in again.stderr.decode()
    assert cloud.sessions("host1") == []

    # a second run finds nothing left to revoke (the recorded name is used now)
    hook = run_tool(cloud, "vmm_hooks", "fence", "--host", "host1")
    assert hook.returncode == 0, hook.stderr
    assert "from ISCSI_INITIATOR of the host in oned" in hook.stdout
    assert f"storage: {HOST1} has no ACL left (already fenced)" in hook.stdout
    assert cloud.sha_on("host2", disk2, 5) == expected


def _leak_vm7(cloud):
    """What a VM 7 whose epilog failed would leave: its clone, the target with host2's ACL,
    host2's session and its disk.0 link."""
    cloud.lab.sh("storage", f"lvcreate -q -V 8M -T {IMAGE_VG}/tpool -n vm-7-disk-0 "
                            "--addtag tm_iscsi --addtag tm_iscsi.vm=7 --addtag tm_iscsi.kind=clone")
    exported = cloud.lab.node_helper("storage", "export", "--vg", IMAGE_VG, "--lv",
                                     "vm-7-disk-0", "--initiator", HOST2)
    link = f"{SYSDIR}/7/disk.0"
    cloud.lab.node_helper("host2", "attach", "--portal", "storage", "--iqn", exported["iqn"],
                          "--serial", exported["serial"], "--link", link)
    return link


def test_leftovers_of_a_done_vm_are_found_and_cleaned(cloud):
    disk1 = deploy_clone(cloud, 0, "host1")   # a live VM: nothing of it may be touched
    link = _leak_vm7(cloud)
    root = ET.fromstring(vm_xml(7, state=6, lcm=0, hosts=("host2",), disks=(0,)))
    done = b64(ET.tostring(root, encoding="unicode"))

    report = run_tool(cloud, "vmm_hooks", "leftovers", done)
    assert report.returncode == 0, report.stderr
    rows = [line.split()[:3] for line in report.stdout.splitlines()[1:]]
    assert rows == [["link", "host2", link],
                    ["session", "host2", target_name("vm-7-disk-0")],
                    ["target", "storage", target_name("vm-7-disk-0")],
                    ["lv", "storage", f"{IMAGE_VG}/vm-7-disk-0"]]
    assert "vm-7-disk-0" in cloud.lvs()   # reported, not removed

    clean = run_tool(cloud, "vmm_hooks", "leftovers", done, "--clean")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.count("removed") == 4
    assert "vm-7-disk-0" not in cloud.lvs()
    assert _initiators(cloud, "vm-7-disk-0") is None
    assert cloud.sessions("host2") == []
    assert cloud.lab.sh("host2", f"test -e {link} && echo yes || echo no").strip() == "no"
    # the live VM's disk is untouched
    assert cloud.sha_on("host1", disk1, 5) == sha_of_file(cloud.raw, 5)
    assert _initiators(cloud, "vm-0-disk-0") == [HOST1]

    again = run_tool(cloud, "vmm_hooks", "leftovers", done)
    assert again.returncode == 0 and again.stdout == "VM 7 left nothing behind\n"
