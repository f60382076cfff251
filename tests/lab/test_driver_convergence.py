"""Every action converges when re-run after failing at any step (oned never retries by itself;
`onevm recover --retry` replays the whole transfer), and a failed action says so in one line.

Each action is failed at its 1st, 2nd, ... node call, before the call is sent and after it has
done its work, each re-run starting from what the previous failure left; then it runs clean and
the result must be the same as an undisturbed run's.

In CI each test runs in the cache modes it names below (`none` and `read+writeback` between them
run every layer's code); bench/soak_converge.py runs them in every mode, with node helpers killed
-9 inside the actions as well (TM_ISCSI_CONVERGE_MODES, TM_ISCSI_CONVERGE_KILLS)."""
import hashlib
import os
import random
import time

import pytest

from harness.cloud import IMAGE_VG, SYSDIR, Cloud, converge_modes as modes, sha_of_file
from harness import fixtures

DISK0 = f"{SYSDIR}/0/disk.0"
CLONE = f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 host1:/var/lib/one//datastores/101/0/disk.0 0 100"
MKIMAGE = "MKIMAGE iscsi_lvm 512 raw host1:/var/lib/one//datastores/101/0/disk.2 0 101"
MIGRATE = ("MV iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 "
           "host2:/var/lib/one//datastores/101/0/disk.0 0 100")
DELETE = "DELETE iscsi_lvm host2:/var/lib/one//datastores/101/0/disk.0 0 100"
HOST1_DISK0 = "host1:/var/lib/one//datastores/101/0/disk.0"
FRONTEND_DISK0 = "frontend:/var/lib/one//datastores/101/0/disk.0"


@pytest.fixture
def cloud(lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        c.import_image(16, "converge")
        c.load_vm("04-vm-deploy", "01-tm-clone")
        c.set_cache_mode("none")
        yield c


@pytest.mark.parametrize("mode", modes("none"))
def test_clone_migrate_delete_converge_from_any_failed_step(cloud, mode):
    cloud.set_cache_mode(mode)
    calls = cloud.converge(CLONE)
    # The initiator, one storage-node transaction, one host transaction, whatever the mode.
    assert calls == 3
    assert cloud.sha_on("host1", DISK0, 2) == sha_of_file(cloud.raw, 2)
    assert len(_sessions_of(cloud, "host1", "vm-0-disk-0")) == 1
    assert _initiators_of(cloud, "vm-0-disk-0") == [["iqn.2026-11.lab.tm-iscsi:host1"]]

    cloud.converge(MKIMAGE)
    assert cloud.lab.sh("host1", f"blockdev --getsize64 {SYSDIR}/0/disk.2").strip() == \
        str(512 << 20)

    written = cloud.write_on("host1", DISK0, b"converge-")
    cloud.converge(MIGRATE)
    assert cloud.sha_on("host2", DISK0, 0) == written
    # host1 keeps the volatile disk only (a read layer's base is released with its last user).
    assert all("vm-0-disk-2" in s["iqn"] for s in cloud.sessions("host1"))
    assert _initiators_of(cloud, "vm-0-disk-0") == [["iqn.2026-11.lab.tm-iscsi:host2"]]

    cloud.converge(DELETE)
    assert "vm-0-disk-0" not in cloud.lvs()
    assert cloud.sessions("host2") == []
    assert cloud.lab.sh("host2", f"test -e {DISK0} && echo yes || echo no").strip() == "no"
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-0", 2) == sha_of_file(cloud.raw, 2)


@pytest.mark.parametrize("mode", modes("read+writeback"))
def test_clone_stop_resume_and_delete_converge_from_any_failed_step(cloud, mode):
    """read+writeback: base, map, three LUNs, the stack and the guard tags, each step failed;
    the stop flushes the write-back layer to the storage node, the resume builds it again."""
    cloud.set_cache_mode(mode)
    calls = cloud.converge(CLONE)
    # The same three calls as mode none: base, map, guards and three LUNs are inside them.
    assert calls == 3
    assert cloud.sha_on("host1", DISK0, 2) == sha_of_file(cloud.raw, 2)
    written = cloud.write_on("host1", DISK0, b"cached-converge-", offset_mib=1)
    cloud.converge(f"MV iscsi_lvm {HOST1_DISK0} {FRONTEND_DISK0} 0 100")
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-0", 1) == written
    assert cloud.leftovers_on_hosts() == {}
    cloud.converge(f"MV iscsi_lvm {FRONTEND_DISK0} {HOST1_DISK0} 0 100")
    assert cloud.sha_on("host1", DISK0, 1) == written
    assert cloud.sha_on("host1", DISK0, 2) == sha_of_file(cloud.raw, 2)
    cloud.converge(DELETE.replace("host2", "host1"))
    assert [lv for lv in cloud.lvs() if lv.startswith("vm-0")] == []
    assert cloud.leftovers_on_hosts() == {}


def _sessions_of(cloud, host, disk):
    return [s for s in cloud.sessions(host) if s["iqn"].endswith(disk)]


def _initiators_of(cloud, disk):
    return [t["initiators"] for t in cloud.exports() if t["iqn"].endswith(disk)]


LN = f"LN iscsi_lvm frontend:{IMAGE_VG}/img-1 host1:/var/lib/one//datastores/101/0/disk.1 0 100"
SNAP = "iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 {snap} 0 100"


# In CI in read+writeback only (its flushes around the snapshots are the paths mode none lacks),
# so the whole run stays inside CI's time; the soak runs every mode.
@pytest.mark.parametrize("mode", modes("read+writeback"))
def test_snapshot_saveas_resize_migrate_and_mvds_converge(cloud, mode):
    cloud.set_cache_mode(mode)
    mkfs = cloud.ds_action("mkfs", 1, cloud.ds_xml("02-image-create-datablock", "01-ds-mkfs"))
    assert mkfs.success, mkfs.info
    for line in (CLONE, MKIMAGE, "MKSWAP iscsi_lvm 256 host1:/var/lib/one//datastores/101/0/"
                                 "disk.3 0 101"):
        assert cloud.tm_action(line).success
    cloud.converge(LN)
    before = cloud.write_on("host1", DISK0, b"before-snapshot-", offset_mib=4)
    cloud.converge("SNAP_CREATE " + SNAP.format(snap=0))
    cloud.write_on("host1", DISK0, b"after-snapshot-", offset_mib=4)
    cloud.converge("SNAP_REVERT " + SNAP.format(snap=0))
    assert cloud.sha_on("host1", DISK0, 4) == before
    mkfs = cloud.ds_action("mkfs", 3,
                           cloud.ds_xml("11-disk-saveas-snapshot-poweroff", "01-ds-mkfs"))
    assert mkfs.success, mkfs.info
    cloud.converge("CPDS iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 "
                   f"{IMAGE_VG}/img-3 0 0 100")
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-3", 4) == before
    cloud.converge("SNAP_DELETE " + SNAP.format(snap=0))
    assert "vm-0-disk-0-snap-0" not in cloud.lvs()
    # Live (the VM runs): the write-back layer flushed and kept clean until the snapshot exists.
    live = cloud.write_on("host1", DISK0, b"live-snapshot-", offset_mib=6)
    cloud.converge("SNAP_CREATE_LIVE " + SNAP.format(snap=1))
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-0-snap-1", 6) == live
    cloud.converge("SNAP_DELETE " + SNAP.format(snap=1))
    cloud.converge("RESIZE iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 96 0 100")
    assert cloud.lab.sh("host1", f"blockdev --getsize64 {DISK0}").strip() == str(96 << 20)

    stdin = (fixtures.folder("09-migrate-live") / "01-tm-premigrate.stdin").read_text()
    cloud.converge(f"PREMIGRATE iscsi_lvm host1 host2 {SYSDIR}/0 0 101", stdin=stdin)
    cloud.converge(f"POSTMIGRATE iscsi_lvm host1 host2 {SYSDIR}/0 0 101", stdin=stdin)
    assert cloud.sessions("host1") == []
    assert cloud.sha_on("host2", DISK0, 4) == before

    written = cloud.write_on("host2", f"{SYSDIR}/0/disk.1", b"persistent-", offset_mib=2)
    cloud.converge(f"MVDS iscsi_lvm host2:/var/lib/one//datastores/101/0/disk.1 "
                   f"{IMAGE_VG}/img-1 0 100")
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 2) == written
    assert all(not t["iqn"].endswith("img-1") for t in cloud.exports())


# Trials of the kill test in CI (bench/soak_kill.py runs 200; bench/soak_converge.py kills inside
# every action), and the seed of their kill moments (a soak run in several parts gives each its
# own).
KILL_TRIALS = int(os.environ.get("TM_ISCSI_KILL_TRIALS", "1"))
KILL_SEED = os.environ.get("TM_ISCSI_KILL_SEED", "kill")


@pytest.mark.parametrize("mode", modes("none", "read+writeback"))
def test_a_helper_killed_inside_a_transaction_converges_on_the_re_run(cloud, mode):
    """kill -9 of the node helper at seeded random moments of a deploy and of a terminate: the
    re-run converges, the disk holds the image's bytes, and the terminate leaves nothing."""
    cloud.set_cache_mode(mode)
    rng = random.Random(f"{KILL_SEED}-{mode}")
    started = time.monotonic()
    assert cloud.tm_action(CLONE).success
    clean = time.monotonic() - started
    assert cloud.tm_action(DELETE.replace("host2", "host1")).success
    for _ in range(KILL_TRIALS):
        cloud.killed_at_random(CLONE, rng, clean)
        result = cloud.tm_action(CLONE)
        assert result.success, result.info
        assert cloud.sha_on("host1", DISK0, 2) == sha_of_file(cloud.raw, 2)
        cloud.killed_at_random(DELETE.replace("host2", "host1"), rng, clean)
        result = cloud.tm_action(DELETE.replace("host2", "host1"))
        assert result.success, result.info
        assert [lv for lv in cloud.lvs() if lv.startswith("vm-0")] == []
        assert cloud.leftovers_on_hosts() == {}
        assert [t["iqn"] for t in cloud.exports() if "vm-0" in t["iqn"]] == []


def test_every_ds_action_converges_and_a_failed_one_leaves_nothing(cloud):
    """cp, mkfs, clone, snap_revert / snap_delete / snap_flatten, export and rm, each failed
    before and after each of its node calls and re-run from what the failure left: the result
    of an undisturbed run, and nothing a failed run made is left behind."""
    cp_xml = cloud.ds_xml("01-image-create-from-path", "02-ds-cp", PATH=cloud.raw, ID=5)
    calls, cp = cloud.converge_ds("cp", 5, cp_xml)
    assert calls == 2 and cp.info.strip() == f"{IMAGE_VG}/img-5 raw"
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-5", 2) == sha_of_file(cloud.raw, 2)
    cloud.converge_ds("mkfs", 1, cloud.ds_xml("02-image-create-datablock", "01-ds-mkfs"))
    assert cloud.lab.sh("storage", f"blkid -o value -s TYPE /dev/{IMAGE_VG}/img-1").strip() == \
        "ext4"
    cloud.converge_ds("clone", 2, cloud.ds_xml("03-image-clone", "01-ds-clone"))
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-2", 3) == sha_of_file(cloud.raw, 3)

    for snap, pattern in enumerate((b"p0", b"p1", b"p2")):
        cloud.write_on("storage", f"/dev/{IMAGE_VG}/img-1", pattern, offset_mib=5)
        cloud.lab.node_helper("storage", "lv-snapshot", "--vg", IMAGE_VG, "--origin", "img-1",
                              "--lv", f"img-1-snap-{snap}")
    p0 = hashlib.sha256(b"p0" * (1 << 19)).hexdigest()
    p2 = hashlib.sha256(b"p2" * (1 << 19)).hexdigest()
    folder = "19-image-snapshots-persistent"
    cloud.converge_ds("snap_revert", 1, cloud.ds_xml(folder, "01-ds-snap_revert"))
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 5) == p0
    cloud.converge_ds("snap_delete", 1, cloud.ds_xml(folder, "02-ds-snap_delete"))
    assert "img-1-snap-1" not in cloud.lvs()
    cloud.converge_ds("snap_flatten", 1, cloud.ds_xml(folder, "03-ds-snap_flatten"))
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 5) == p2
    assert [lv for lv in cloud.lvs() if lv.startswith("img-1-")] == []

    started = time.time() - 1
    _, exported = cloud.converge_ds("export", 1, cloud.ds_xml(folder, "01-ds-snap_revert"))
    path = exported.info.split("<IMPORT_SOURCE><![CDATA[")[1].split("]]>")[0]
    # Only the runs that succeeded (the first past the last fault, the clean one, and a killed
    # run the kill came too late for) left a file for the market driver in the spool (where the
    # driver says it is): every failed export removed its own.
    spool = os.path.dirname(path)
    left = {name for name in os.listdir(spool) if name.startswith("img-1-") and
            os.path.getmtime(os.path.join(spool, name)) >= started}
    uncut = sum(1 for action, cut in cloud.kills if action == "ds-export" and not cut)
    assert len(left) == 2 + uncut and os.path.basename(path) in left, left
    md5 = exported.info.split("<MD5><![CDATA[")[1].split("]]>")[0]
    assert hashlib.md5(open(path, "rb").read()).hexdigest() == md5
    for name in left:
        os.unlink(os.path.join(spool, name))

    cloud.converge_ds("rm", 2, cloud.ds_xml("23-image-delete-ds-rm", "01-ds-rm"))
    assert "img-2" not in cloud.lvs()
    assert [lv for lv in cloud.lvs() if lv.endswith(("-next", "-prev"))] == []


@pytest.mark.parametrize("mode", modes("read+writeback"))
def test_volatile_context_and_a_failed_live_migration_converge_with_caches(cloud, tmp_path,
                                                                           mode):
    """mkswap, context, premigrate then failmigrate (the migration given up after the
    destination was prepared), each failed at every step and re-run."""
    cloud.set_cache_mode(mode)
    mkfs = cloud.ds_action("mkfs", 1, cloud.ds_xml("02-image-create-datablock", "01-ds-mkfs"))
    assert mkfs.success, mkfs.info
    for line in (CLONE, MKIMAGE, LN):
        assert cloud.tm_action(line).success
    cloud.converge("MKSWAP iscsi_lvm 256 host1:/var/lib/one//datastores/101/0/disk.3 0 101")
    assert cloud.lab.sh("host1", f"blkid -o value -s TYPE {SYSDIR}/0/disk.3").strip() == "swap"
    script = tmp_path / "context.sh"
    script.write_text("ETH0_IP='10.0.0.5'\n")
    cloud.converge(f"CONTEXT iscsi_lvm {script} host1:/var/lib/one//datastores/101/0/disk.4 "
                   "0 101")
    assert cloud.lab.sh("host1", f"blkid -o value -s TYPE {SYSDIR}/0/disk.4").strip() == \
        "iso9660"
    written = cloud.write_on("host1", DISK0, b"before-migration-", offset_mib=3)
    stdin = (fixtures.folder("09-migrate-live") / "01-tm-premigrate.stdin").read_text()
    cloud.converge(f"PREMIGRATE iscsi_lvm host1 host2 {SYSDIR}/0 0 101", stdin=stdin)
    cloud.converge(f"FAILMIGRATE iscsi_lvm host1 host2 {SYSDIR}/0 0 101", stdin=stdin)
    # The VM stays on host1 with its data; host2 holds nothing of it.
    assert cloud.sha_on("host1", DISK0, 3) == written
    assert cloud.sessions("host2") == []
    assert cloud.leftovers_on_hosts().get("host2") is None
    written = cloud.write_on("host1", DISK0, b"after-failmigrate-", offset_mib=3)
    assert cloud.tm_action("MV iscsi_lvm host1:/var/lib/one//datastores/101/0/disk.0 "
                           "frontend:/var/lib/one//datastores/101/0/disk.0 0 100").success
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-0", 3) == written
