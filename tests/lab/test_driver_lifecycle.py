"""A VM's whole life through the real driver, as oned 7.4.0 drove it (the captured transfer files
and argv), on the real kernel: bytes written through the host devices read back after every step,
the image never changes, and terminate leaves only what images own."""

import pytest

from harness.cloud import IMAGE_VG, SYSDIR, Cloud, pattern_file, sha_of_file
from harness import fixtures

VM_DIR = f"{SYSDIR}/0"
IMAGE_MIB = 64


# read+writeback runs every layer of the other two cached modes (read and writeback alone are
# run on devices by test_dmcache_stacks); none is the plain path.
MODES = ("none", "read+writeback")


@pytest.fixture(params=MODES)
def cloud(request, lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        c.set_cache_mode(request.param)
        c.mode = request.param
        yield c


def _create_images(cloud, tmp_path):
    raw = pattern_file(tmp_path / "debian12.raw", IMAGE_MIB, "os-base")
    xml = cloud.ds_xml("01-image-create-from-path", "01-ds-stat", PATH=raw)
    stat = cloud.ds_action("stat", 0, xml)
    assert stat.success and stat.info.strip() == str(IMAGE_MIB)
    xml = cloud.ds_xml("01-image-create-from-path", "02-ds-cp", PATH=raw)
    cp = cloud.ds_action("cp", 0, xml)
    assert cp.success, cp.info
    assert cp.info.strip() == f"{IMAGE_VG}/img-0 raw"
    # persistent 1024 MiB ext4 datablock
    mkfs = cloud.ds_action("mkfs", 1, cloud.ds_xml("02-image-create-datablock", "01-ds-mkfs"))
    assert mkfs.success, mkfs.info
    assert mkfs.info.strip() == f"{IMAGE_VG}/img-1"
    assert cloud.lab.sh("storage", f"blkid -o value -s TYPE /dev/{IMAGE_VG}/img-1").strip() == "ext4"
    return raw


def _image_unchanged(cloud, raw):
    for mib in (0, 1, IMAGE_MIB - 1):
        assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-0", mib) == sha_of_file(raw, mib), \
            f"image img-0 changed at MiB {mib}"


def _disk(n):
    return f"{VM_DIR}/disk.{n}"


def _check_disks(cloud, host, written):
    for (disk, mib), digest in written.items():
        assert cloud.link_target(host, _disk(disk)).startswith("/dev/"), f"disk.{disk} not linked"
        assert cloud.sha_on(host, _disk(disk), mib) == digest, \
            f"disk.{disk} on {host} lost what was written at MiB {mib}"


def test_vm_lifecycle_on_real_devices(cloud, tmp_path):
    raw = _create_images(cloud, tmp_path)
    cloud.load_vm("04-vm-deploy", "01-tm-clone")

    # deploy: clone, ln, mkimage (ext4 512), mkswap (256), then context
    cloud.transfer_file("04-vm-deploy", "vm0.transfer.0.prolog")
    context_sh = tmp_path / "context.sh"
    context_sh.write_text("ONEGATE_ENDPOINT='x'\nHOSTNAME='vm-a'\n")
    ctx_line = f"CONTEXT iscsi_lvm {context_sh} host1:/var/lib/one//datastores/101/0/disk.4 0 101"
    assert cloud.tm_action(ctx_line).success
    assert cloud.lab.sh("host1", f"blkid -o value -s TYPE {_disk(4)}").strip() == "iso9660"

    # the clone reads the image; the persistent disk is the image LV itself
    assert cloud.sha_on("host1", _disk(0), 5) == sha_of_file(raw, 5)
    assert cloud.lab.sh("host1", f"blkid -o value -s TYPE {_disk(2)}").strip() == "ext4"
    assert cloud.lab.sh("host1", f"blkid -o value -s TYPE {_disk(3)}").strip() == "swap"
    assert cloud.lab.sh("host1", f"blockdev --getsize64 {_disk(2)}").strip() == str(512 << 20)
    # The VM directory is oneadmin's, as on any OpenNebula host: the KVM driver writes its
    # deployment file there as oneadmin (over ssh, as a real front-end logs in).
    assert cloud.lab.sh("host1", f"stat -c '%U %G' {VM_DIR}").strip() == "oneadmin oneadmin"
    wrote = cloud.lab.api.exec_("host1", ["sh", "-c", f"echo '<domain/>' > {VM_DIR}/deployment.0 "
                                          f"&& stat -c %U {VM_DIR}/deployment.0"], user="oneadmin")
    assert wrote.returncode == 0 and wrote.stdout.decode().strip() == "oneadmin", wrote.stderr

    written = {}
    for (disk, mib), pattern in {(0, 3): b"vm0-disk0-", (1, 700): b"vm0-disk1-persistent-",
                                 (2, 100): b"vm0-volatile-"}.items():
        written[(disk, mib)] = cloud.write_on("host1", _disk(disk), pattern, offset_mib=mib)
    _check_disks(cloud, "host1", written)
    _image_unchanged(cloud, raw)
    # only host1 may reach the VM's LUNs
    for target in cloud.exports():
        assert target["initiators"] == ["iqn.2026-11.lab.tm-iscsi:host1"], target

    # re-running a finished deploy changes nothing
    before = (cloud.lvs(), cloud.exports(), cloud.sessions("host1"))
    cloud.transfer_file("04-vm-deploy", "vm0.transfer.0.prolog")
    assert (cloud.lvs(), cloud.exports(), cloud.sessions("host1")) == before

    # stop / resume: disks leave host1 for the front-end, the VM dir (context ISO) travels too;
    # every write is on the storage node once the host let go (write-back caches flushed)
    cloud.transfer_file("07-stop-resume", "vm0.transfer.2.stop")
    assert cloud.sessions("host1") == []
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-0", 3) == written[(0, 3)]
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 700) == written[(1, 700)]
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-2", 100) == written[(2, 100)]
    assert cloud.lab.sh("host1", f"ls {VM_DIR} 2>/dev/null || true").strip() == ""
    cloud.transfer_file("07-stop-resume", "vm0.transfer.3.resume")
    _check_disks(cloud, "host1", written)

    # cold migrate host1 -> host2
    cloud.transfer_file("08-migrate-cold", "vm0.transfer.4.migrate")
    assert cloud.sessions("host1") == []
    _check_disks(cloud, "host2", written)
    for target in cloud.exports():
        assert target["initiators"] == ["iqn.2026-11.lab.tm-iscsi:host2"], target

    # live migrate host2 -> host1 (the captured argv and stdin)
    live = fixtures.folder("09-migrate-live")
    stdin = (live / "01-tm-premigrate.stdin").read_text()
    pre = cloud.tm_action(f"PREMIGRATE iscsi_lvm host2 host1 {SYSDIR}/0 0 101", stdin=stdin)
    assert pre.success, pre.info
    _check_disks(cloud, "host1", written)   # both hosts see the disks during the switch
    post = cloud.tm_action(f"POSTMIGRATE iscsi_lvm host2 host1 {SYSDIR}/0 0 101", stdin=stdin)
    assert post.success, post.info
    assert cloud.sessions("host2") == []
    _check_disks(cloud, "host1", written)

    # live disk snapshot of the running disk 0 (oned's SNAP_CREATE_LIVE argv): it holds what the
    # guest wrote just before, dirty write-back blocks included, and nothing written after; a
    # write-back layer caches writes again afterwards
    live_write = cloud.write_on("host1", _disk(0), b"before-live-snapshot-", offset_mib=6)
    snap = cloud.tm_action(f"SNAP_CREATE_LIVE iscsi_lvm host1:{SYSDIR}/0/disk.0 5 0 100")
    assert snap.success, snap.info
    cloud.write_on("host1", _disk(0), b"after-live-snapshot-", offset_mib=6)
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-0-snap-5", 6) == live_write
    if "writeback" in cloud.mode:
        table = cloud.lab.sh("host1", "dmsetup table tmi-wb-vm-0-disk-0")
        assert " writeback " in f" {table} ", table
    assert cloud.tm_action(f"SNAP_DELETE iscsi_lvm host1:{SYSDIR}/0/disk.0 5 0 100").success
    assert "vm-0-disk-0-snap-5" not in cloud.lvs()

    # disk snapshots (powered off): s0, write, s1, revert to s0, delete s1
    cloud.transfer_file("10-disk-snapshots-poweroff", "vm0.transfer.6.disk_snapshot")
    after_s0 = cloud.write_on("host1", _disk(0), b"after-snapshot-0-", offset_mib=3)
    cloud.transfer_file("10-disk-snapshots-poweroff", "vm0.transfer.7.disk_snapshot")
    cloud.transfer_file("10-disk-snapshots-poweroff", "vm0.transfer.8.disk_snapshot")
    assert cloud.sha_on("host1", _disk(0), 3) == written[(0, 3)]
    assert cloud.sha_on("host1", _disk(0), 3) != after_s0
    cloud.transfer_file("10-disk-snapshots-poweroff", "vm0.transfer.9.disk_snapshot")
    assert "vm-0-disk-0-snap-1" not in cloud.lvs()
    assert "vm-0-disk-0-snap-0" in cloud.lvs()

    # save-as from snapshot 0 -> new image 3
    mkfs = cloud.ds_action("mkfs", 3,
                           cloud.ds_xml("11-disk-saveas-snapshot-poweroff", "01-ds-mkfs"))
    assert mkfs.success and mkfs.info.strip() == f"{IMAGE_VG}/img-3", mkfs.info
    cloud.transfer_file("11-disk-saveas-snapshot-poweroff", "vm0.transfer.12.disk_saveas")
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-3", 3) == written[(0, 3)]

    # resize disk 0 to 128 MiB: the host sees the new size, the data stays
    cloud.transfer_file("13-disk-resize-poweroff", "vm0.transfer.14.disk_resize")
    assert cloud.lab.sh("host1", f"blockdev --getsize64 {_disk(0)}").strip() == str(128 << 20)
    _check_disks(cloud, "host1", written)
    _image_unchanged(cloud, raw)

    # terminate: clone and volatile disks go, the persistent image keeps its bytes
    cloud.transfer_file("17-terminate", "vm0.transfer.23.epilog")
    assert cloud.leftovers_on_hosts() == {}
    assert cloud.exports() == []
    remaining = cloud.lvs()
    assert [lv for lv in remaining if lv.startswith("vm-")] == [], remaining
    assert {"img-0", "img-1", "img-3", "tpool"} <= set(remaining)
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 700) == written[(1, 700)]
    _image_unchanged(cloud, raw)

    # terminate replayed (recover --retry) changes nothing and fails nowhere
    cloud.transfer_file("17-terminate", "vm0.transfer.23.epilog")
    assert cloud.lvs() == remaining
