"""A host that crashes with dirty write-back data, through the driver as oned would drive it: the
data stays on the host's cache disk, the guard tag on the storage node keeps any other host from
using the disk (a VM recreated elsewhere is refused with the one line that says what to do),
the host's boot-time activation flushes it, and then the disk moves with every byte."""
import pytest

from harness.cloud import IMAGE_VG, SYSDIR, Cloud, plain_lines, sha_of_file

IMAGE_MIB = 32
DISK = f"{SYSDIR}/0/disk.0"
CLONE_TO = (f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 "
            "{host}:/var/lib/one//datastores/101/0/disk.0 0 100")


@pytest.fixture
def cloud(lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        c.set_cache_mode("writeback")
        c.import_image(IMAGE_MIB, "crash")
        c.load_vm("04-vm-deploy", "01-tm-clone")
        yield c


def _dirty_blocks(cloud, host):
    stacks = cloud.lab.node_helper(host, "cache-status")["stacks"]
    return sum(int(s.get("dirty_blocks") or 0) for s in stacks)


def test_crashed_host_keeps_its_dirty_data_and_no_other_host_gets_the_disk(cloud):
    assert cloud.tm_action(CLONE_TO.format(host="host1")).success
    written = cloud.write_on("host1", DISK, b"dirty-at-the-crash-", offset_mib=3)
    cloud.lab.sh("host1", "sync")
    assert _dirty_blocks(cloud, "host1") > 0

    cloud.lab.api.crash("host1")
    # oned recreates the VM on host2 (the HOST ERROR hook's reschedule): the prolog runs there.
    recreate = cloud.tm_action(CLONE_TO.format(host="host2"))
    assert not recreate.success
    plain = plain_lines(recreate)
    assert len(plain) == 1 and "unflushed write-back data on host1" in plain[0], plain
    assert "boot host1" in plain[0]
    assert cloud.sessions("host2") == []
    assert cloud.lab.sh("host2", f"test -e {DISK} && echo yes || echo no").strip() == "no"

    # host1 boots; its activation (the boot unit install.sh puts in place) flushes the data.
    cloud.lab.api.boot("host1")
    activated = cloud.lab.node_helper("host1", "activate")
    assert [s["reassembled"] for s in activated["stacks"]] == [True]
    assert activated["stacks"][0]["flushed_blocks"] > 0
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-0", 3) == written

    # Now the disk may move: a cold migration takes it to host2 with every byte.
    move = cloud.tm_action("MV iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 "
                           "host2:/var/lib/one//datastores/101/0/disk.0 0 100")
    assert move.success, move.stderr
    assert cloud.sha_on("host2", DISK, 3) == written
    assert cloud.sha_on("host2", DISK, 5) == sha_of_file(cloud.raw, 5)
    assert cloud.sessions("host1") == []
