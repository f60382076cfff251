"""Cache-aware placement on the real kernel: the host probe, run on each host as monitord runs it
(oneadmin, the helper through sudo), reports what the host's read caches hold into the host's
template as oned keeps it; `tm-iscsi estimate` then ranks the host that caches the image first,
and a VM given its SCHED_RANK by the placement hook is placed there by the stand-in's rank
scheduler and deployed there, reading the image's bytes."""
import json
import xml.etree.ElementTree as ET

import pytest

from harness.cloud import IMAGE_VG, SYSDIR, Cloud, sha_of_file
from harness.documents import vm_xml
from tests.lab.test_hooks import run_tool

IMAGE_MIB = 16


@pytest.fixture
def cloud(lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        c.set_cache_mode("read+writeback")
        c.set_template_attr("datastore", 100, "CACHE_AWARE_PLACEMENT", "YES")
        c.register_image(IMAGE_MIB, "placement")
        yield c


def _template(cloud, host):
    host_id = cloud.host_id(host)
    return ET.fromstring(cloud.oned.xml("host", host_id)).find("TEMPLATE")


def test_the_host_that_caches_the_image_is_estimated_first_and_chosen(cloud):
    cloud.oned.put_xml(vm_xml(0, hosts=("host2",), disks=(0,)))
    line = (f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 host2:/var/lib/one//datastores/101/0/"
            "disk.0 0 100")
    assert cloud.tm_action(line).success
    assert cloud.sha_on("host2", f"{SYSDIR}/0/disk.0", 0, IMAGE_MIB) == \
        sha_of_file(cloud.raw, 0, IMAGE_MIB)
    warm = cloud.lab.node_helper("host2", "cache-warm", "--seconds", "120")
    assert warm["complete"] is True, warm

    lines = {h: cloud.host_probe(h) for h in ("host1", "host2")}
    assert 'TM_ISCSI_CACHE_STATE="ok"' in lines["host1"], lines
    assert _template(cloud, "host2").findtext("TM_ISCSI_IMAGE_0_MB") == str(IMAGE_MIB)
    assert _template(cloud, "host2").findtext("TM_ISCSI_WRITEBACK_STACKS") == "1"
    assert _template(cloud, "host1").findtext("TM_ISCSI_IMAGE_0_MB") is None

    estimate = run_tool(cloud, "tm_iscsi.admin", "estimate", "--image", "0", "--json")
    assert estimate.returncode == 0, estimate.stderr
    data = json.loads(estimate.stdout)
    ranked = [(r["host"], r["iscsi_read_mib"]) for r in data["hosts"]]
    assert ranked == [("host2", 0), ("host1", IMAGE_MIB)], data
    assert data["sched_rank"] == "TM_ISCSI_IMAGE_0_MB"
    live = run_tool(cloud, "tm_iscsi.admin", "estimate", "--image", "0", "--live", "--json")
    assert live.returncode == 0, live.stderr
    assert json.loads(live.stdout)["hosts"][0]["host"] == "host2"

    # A new VM of the image, pending: the hook gives it the rank, the scheduler places it.
    pending = ET.fromstring(vm_xml(1, state=1, lcm=0, hosts=(), disks=(0,)))
    cloud.oned.put_xml(ET.tostring(pending, encoding="unicode"))
    hook = run_tool(cloud, "vmm_hooks", "place", "--vm", "1", "--json")
    assert hook.returncode == 0, hook.stderr
    assert json.loads(hook.stdout)["action"] == "set"
    host = cloud.oned.place(1)
    assert host == "host2"
    line = (f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 {host}:/var/lib/one//datastores/101/1/"
            "disk.0 1 100")
    assert cloud.tm_action(line).success
    assert cloud.sha_on(host, f"{SYSDIR}/1/disk.0", 0, IMAGE_MIB) == \
        sha_of_file(cloud.raw, 0, IMAGE_MIB)
