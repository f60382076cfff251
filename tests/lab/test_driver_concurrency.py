"""oned's one_tm runs up to 15 transfer actions at once: 15 deploys of one image at the same time on
two hosts, then 15 terminates at the same time, all succeed; with read+writeback every stack has
its read layer over one shared base, the disks hold the image's bytes, and nothing is left."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.cloud import IMAGE_VG, SYSDIR, Cloud, sha_of_file
from harness.documents import vm_xml

PARALLEL = 15


@pytest.fixture
def cloud(lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        c.import_image(16, "burst")
        # 15 write-back caches must fit the hosts' cache VGs.
        c.set_template_attr("datastore", 100, "WRITEBACK_CACHE_MB", "64")
        c.set_template_attr("datastore", 101, "WRITEBACK_CACHE_MB", "64")
        yield c


def _host(vm_id):
    return "host1" if vm_id % 2 else "host2"


def _at_once(cloud, lines):
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(cloud.tm_action, lines))
    return [f"{line.split()[0]} {line.split()[-2]}: {r.info.strip()}"
            for line, r in zip(lines, results) if not r.success]


@pytest.mark.parametrize("mode", ["none", "read+writeback"])
def test_15_deploys_then_15_terminates_at_once(cloud, mode):
    cloud.set_cache_mode(mode)
    vms = range(1, PARALLEL + 1)
    for vm_id in vms:
        cloud.oned.put_xml(vm_xml(vm_id, hosts=(_host(vm_id),), disks=(0,)))
    clones = [f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 {_host(v)}:{SYSDIR}/{v}/disk.0 {v} 100"
              for v in vms]
    assert _at_once(cloud, clones) == []

    image_sha = sha_of_file(cloud.raw, 0, 16)
    for vm_id in vms:
        assert cloud.sha_on(_host(vm_id), f"{SYSDIR}/{vm_id}/disk.0", 0, 16) == image_sha
    if mode == "read+writeback":
        for host in ("host1", "host2"):
            stacks = cloud.lab.node_helper(host, "cache-status")["stacks"]
            assert len(stacks) == len([v for v in vms if _host(v) == host])
            assert {s["mode"] for s in stacks} == {"read+writeback"}
            # One read layer: every stack reads the same generation of the image's base.
            assert len({s["base_key"] for s in stacks}) == 1
    vm_lvs = [lv for lv in cloud.lvs() if lv.startswith("vm-")]
    assert len([lv for lv in vm_lvs if not lv.endswith("-map")]) == PARALLEL

    deletes = [f"DELETE iscsi_lvm {_host(v)}:{SYSDIR}/{v}/disk.0 {v} 100" for v in vms]
    assert _at_once(cloud, deletes) == []
    dirs = [f"DELETE iscsi_lvm {_host(v)}:{SYSDIR}/{v} {v} 101" for v in vms]
    assert _at_once(cloud, dirs) == []

    assert [lv for lv in cloud.lvs() if lv.startswith("vm-")] == []
    assert [t["iqn"] for t in cloud.exports() if "vm-" in t["iqn"]] == []
    assert cloud.leftovers_on_hosts() == {}
    # Nothing but the image's own base may still be exported, to nobody.
    assert all(not t["initiators"] for t in cloud.exports())
