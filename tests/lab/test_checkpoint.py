"""Write-back checkpoints and a host lost for good, on the real kernel: a filesystem written
through host1's write-back stack is checkpointed, written more, and host1 is killed and never
comes back; once it is fenced, `tm-iscsi host-lost` puts the disk back to the checkpoint and the
disk assembled on host2 holds every record written before the checkpoint, none after it half,
and a clean filesystem. Checkpoints under a running writer never fail a write; a hold's watchdog
lets the VM go on when nobody ends the hold; host-lost refuses a host that is not fenced."""
import json

import pytest

from harness.cloud import IMAGE_VG, Cloud
from harness.documents import host_xml, vm_xml
from tests.lab.test_hooks import deploy_clone, run_tool

IMAGE_MIB = 64
MOUNT = "/mnt/tm-iscsi-ckpt"
RECORD_BYTES = 65536


@pytest.fixture
def cloud(lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        c.set_cache_mode("read+writeback")
        c.import_image(IMAGE_MIB, "ckpt")
        c.oned.put_document(host_xml(0, "host1", vm_ids=(0,)))
        c.oned.put_document(host_xml(1, "host2"))
        yield c


def _dirty_blocks(cloud, host):
    stacks = cloud.lab.node_helper(host, "cache-status")["stacks"]
    return sum(int(s.get("dirty_blocks") or 0) for s in stacks)


def _write_records(cloud, first, last):
    """Records first..last, each a file made complete (written, fsynced) under a temporary
    name and then renamed: a record is there whole or not at all."""
    # `yes` ends on SIGPIPE: not a failure of the pipeline here.
    cloud.lab.sh("host1", f"set +o pipefail; for i in $(seq {first} {last}); do "
                          f"yes record-$i | head -c {RECORD_BYTES} > {MOUNT}/.r$i && "
                          f"sync {MOUNT}/.r$i && mv {MOUNT}/.r$i {MOUNT}/r$i && sync {MOUNT}; "
                          "done")


def _records_on(cloud, host):
    """{record number: whole?} of the records in the filesystem mounted on `host`."""
    out = cloud.lab.sh(host, f"set +o pipefail; cd {MOUNT} && for f in r*; do [ -e \"$f\" ] || continue; "
                             "n=${f#r}; want=$(yes record-$n | head -c " f"{RECORD_BYTES} | "
                             "sha256sum | cut -c1-64); got=$(sha256sum < \"$f\" | cut -c1-64); "
                             "[ \"$want\" = \"$got\" ] && echo \"$n whole\" || echo \"$n torn\"; "
                             "done")
    return {int(n): state == "whole" for n, state in (line.split() for line in out.splitlines())}


def _lv_state(cloud):
    return {row["lv"]: sorted(row["tags"]) for row in
            cloud.lab.node_helper("storage", "lv-list", "--vg", IMAGE_VG)["lvs"]}


def _json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_lost_host_leaves_the_disk_at_its_checkpoint_whole_and_usable_elsewhere(cloud):
    disk = deploy_clone(cloud, 0, "host1")
    cloud.lab.sh("host1", f"mkfs.ext4 -q -F {disk} && mkdir -p {MOUNT} && mount {disk} {MOUNT}")
    _write_records(cloud, 0, 19)
    assert _dirty_blocks(cloud, "host1") > 0

    report = _json(run_tool(cloud, "tm_iscsi.admin", "checkpoint", "0", "--json"))
    (done,) = report["checkpoints"]
    assert report["failed"] == [] and done["disks"][0]["drained_mib"] > 0
    assert {"vm-0-disk-0", "vm-0-disk-0-ckpt"} <= set(_lv_state(cloud))
    _write_records(cloud, 20, 39)
    assert _dirty_blocks(cloud, "host1") > 0     # what is after the checkpoint is on host1 only

    cloud.lab.api.crash("host1")
    # oned marks the host ERROR; before it is fenced, declaring it lost is refused and changes
    # nothing.
    cloud.oned.put_document(host_xml(0, "host1", state=3, vm_ids=(0,)))
    before = _lv_state(cloud)
    refused = run_tool(cloud, "tm_iscsi.admin", "host-lost", "host1")
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1, refused.stderr
    assert "fence" in refused.stderr
    assert _lv_state(cloud) == before
    recreate = cloud.tm_action("CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                               "host2:/var/lib/one//datastores/101/0/disk.0 0 100")
    assert not recreate.success and "unflushed write-back data on host1" in recreate.stderr

    fenced = run_tool(cloud, "vmm_hooks", "fence", "--host", "host1")
    assert fenced.returncode == 0, fenced.stderr
    lost = _json(run_tool(cloud, "tm_iscsi.admin", "host-lost", "host1", "--json"))
    assert lost["ok"] and lost["errors"] == {}
    (recovered,) = lost["disks"]
    assert recovered["lv"] == "vm-0-disk-0" and recovered["checkpoint"] == "vm-0-disk-0-ckpt"
    assert 0 <= recovered["age_seconds"] < 600
    again = _json(run_tool(cloud, "tm_iscsi.admin", "host-lost", "host1", "--json"))
    assert again["disks"] == [] and again["ok"]

    # oned recreates the VM on host2: its prolog assembles the disk there.
    disk2 = deploy_clone(cloud, 0, "host2")
    cloud.lab.sh("host2", f"mkdir -p {MOUNT} && mount {disk2} {MOUNT}")   # replays the journal
    records = _records_on(cloud, "host2")
    cloud.lab.sh("host2", f"umount {MOUNT}")
    assert all(records.get(n) for n in range(20)), records
    assert all(records[n] for n in records), f"torn records: {records}"
    assert not set(records) - set(range(40))
    fsck = cloud.lab.sh("host2", f"e2fsck -fn {disk2} >/dev/null 2>&1; echo $?").strip()
    assert fsck == "0"

    # host1 comes back after all, its cache disk still holding records 20-39: its boot-time
    # activation cannot reach the disk (fenced), and when the VM moves back to host1 its stale
    # write-back cache is dropped, never written over the recovered disk.
    cloud.lab.api.boot("host1")
    activated = cloud.lab.node_helper("host1", "activate", check=False)
    assert activated.returncode != 0 or b'"flushed_blocks": 0' in activated.stdout or \
        b"flushed_blocks" not in activated.stdout, activated.stdout
    cloud.oned.put_xml(vm_xml(0, hosts=("host2", "host1"), disks=(0,)))
    move = cloud.tm_action("MV iscsi_lvm host2:/var/lib/one//datastores/101/0/disk.0 "
                           "host1:/var/lib/one//datastores/101/0/disk.0 0 100")
    assert move.success, move.stderr
    cloud.lab.sh("host1", f"mkdir -p {MOUNT} && mount {disk} {MOUNT}")
    assert _records_on(cloud, "host1") == records
    cloud.lab.sh("host1", f"umount {MOUNT}")


def test_checkpoints_under_a_running_writer_and_a_hold_nobody_ends(cloud):
    disk = deploy_clone(cloud, 0, "host1")
    log = "/tmp/tm-iscsi-writer.log"
    # 64 KiB direct writes to 128 places, one after the other, while checkpoints are cut.
    cloud.lab.sh("host1", f"rm -f {log}; (i=0; while [ ! -e /tmp/stop-writer ]; do "
                          f"dd if=/dev/urandom of={disk} bs=64k count=1 seek=$((i % 128)) "
                          "oflag=direct conv=notrunc status=none || echo FAILED; "
                          f"i=$((i + 1)); done > {log} 2>&1; echo done >> {log}) "
                          "</dev/null >/dev/null 2>&1 &")
    try:
        cuts = []
        for _ in range(3):
            report = _json(run_tool(cloud, "tm_iscsi.admin", "checkpoint", "0", "--json"))
            assert report["failed"] == []
            cuts.append(report["checkpoints"][0]["disks"][0]["cut_at"])
        assert cuts == sorted(cuts) and len(set(cuts)) == 3
    finally:
        cloud.lab.sh("host1", "touch /tmp/stop-writer; "
                              f"for i in $(seq 100); do grep -q done {log} && break; sleep 0.2; "
                              "done; rm -f /tmp/stop-writer")
    written = cloud.lab.sh("host1", f"cat {log}")
    assert "FAILED" not in written and written.strip().endswith("done"), written
    names = set(_lv_state(cloud))
    assert "vm-0-disk-0-ckpt" in names and not {"vm-0-disk-0-ckpt-next",
                                                  "vm-0-disk-0-ckpt-prev"} & names

    # No dirty data: nothing to drain, and the snapshot shares every block.
    cloud.lab.node_helper("host1", "stack-flush", "--name", "vm-0-disk-0")
    cloud.lab.node_helper("host1", "stack-writeback", "--name", "vm-0-disk-0")
    pool_before = cloud.lab.node_helper("storage", "pool-status", "--vg", IMAGE_VG)
    report = _json(run_tool(cloud, "tm_iscsi.admin", "checkpoint", "0", "--json"))
    assert report["checkpoints"][0]["disks"][0]["drained_mib"] == 0
    pool_after = cloud.lab.node_helper("storage", "pool-status", "--vg", IMAGE_VG)
    assert pool_after["data_percent"] - pool_before["data_percent"] < 0.1

    # A hold that nobody ends (the front-end died): the watchdog resumes the disk's top and
    # puts it back into write-back, and the late resume says the hold did not last.
    request = json.dumps({"stacks": ["vm-0-disk-0"], "token": "00ff00ff00ff00ff", "hold": True,
                          "hold_seconds": 3})
    cloud.lab.node_helper("host1", "checkpoint-drain", "--request", request)
    top = "tmi-top-vm-0-disk-0"
    assert "s" in cloud.lab.sh("host1", f"dmsetup info -c --noheadings -o attr {top}")[2]
    cloud.lab.sh("host1", f"for i in $(seq 50); do dmsetup info -c --noheadings -o attr {top} "
                          "| grep -q '^..s' || break; sleep 0.2; done; "
                          "for i in $(seq 50); do dmsetup table tmi-wb-vm-0-disk-0 | "
                          "grep -q writeback && break; sleep 0.2; done")
    assert cloud.lab.sh("host1", f"dmsetup info -c --noheadings -o attr {top}")[2] != "s"
    assert "writeback" in cloud.lab.sh("host1", "dmsetup table tmi-wb-vm-0-disk-0")
    late = cloud.lab.node_helper("host1", "checkpoint-resume", "--request", json.dumps(
        {"stacks": ["vm-0-disk-0"], "token": "00ff00ff00ff00ff"}))
    assert late["valid"] is False


def _checkpoints_converged(cloud, lvs):
    """Each disk has exactly its committed checkpoint, no half-made one; every stack on host1 is
    in write-back again with its top running."""
    names = set(_lv_state(cloud))
    for lv in lvs:
        assert f"{lv}-ckpt" in names, names
        assert not {f"{lv}-ckpt-next", f"{lv}-ckpt-prev"} & names, names
    for lv in lvs:
        assert "writeback" in cloud.lab.sh("host1", f"dmsetup table tmi-wb-{lv}")
    attrs = cloud.lab.sh("host1", "dmsetup info -c --noheadings --separator ' ' -o name,attr | grep tmi- || true")
    assert all(line.split()[1][2] != "s" for line in attrs.splitlines()), attrs


def test_a_checkpoint_of_several_disks_converges_after_a_failure_at_every_call(cloud):
    """The VM of 04-vm-deploy (a clone, a persistent image, a volatile disk: three write-back
    disks, cut at one instant with their tops held), its checkpoint failed before and after each
    of its four node calls and run again."""
    mkfs = cloud.ds_action("mkfs", 1, cloud.ds_xml("02-image-create-datablock", "01-ds-mkfs",
                                                   SIZE=64))
    assert mkfs.success, mkfs.info
    cloud.load_vm("04-vm-deploy", "01-tm-clone")
    cloud.transfer("CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                   "host1:/var/lib/one//datastores/101/0/disk.0 0 100\n"
                   "LN iscsi_lvm frontend:vg-one-100/img-1 "
                   "host1:/var/lib/one//datastores/101/0/disk.1 0 100\n"
                   "MKIMAGE iscsi_lvm 64 raw host1:/var/lib/one//datastores/101/0/disk.2 0 101\n")
    cloud.oned.put_xml(vm_xml(0, disks=(0, 1, 2)))       # RUNNING now
    lvs = ["vm-0-disk-0", "img-1", "vm-0-disk-2"]
    first = _json(run_tool(cloud, "tm_iscsi.admin", "checkpoint", "0", "--json"))
    (done,) = first["checkpoints"]
    assert done["held"] is True and sorted(d["lv"] for d in done["disks"]) == sorted(lvs)
    assert len({d["cut_at"] for d in done["disks"]}) == 3
    _checkpoints_converged(cloud, lvs)
    for when in ("before", "after"):
        for call in range(1, 5):
            env = {"TM_ISCSI_FAULT": f"{when}:{call}"}
            failed = run_tool_env(cloud, env, "tm_iscsi.admin", "checkpoint", "0")
            assert failed.returncode != 0 and "injected fault" in failed.stdout + failed.stderr
            again = _json(run_tool(cloud, "tm_iscsi.admin", "checkpoint", "0", "--json"))
            assert again["failed"] == [], (when, call, again)
            _checkpoints_converged(cloud, lvs)


def run_tool_env(cloud, env, module, *args):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", module, *args],
                          env={**os.environ, **cloud.env, **env}, capture_output=True,
                          text=True, timeout=300)
