"""Cache stacks on the lab's real kernel: every mode over real LUNs, the read cache serving a
second VM from local disk, write-back dirty on the host until flushed, the base never written,
a dropped cache, a cold move to the other host, and a host crash with fsynced dirty data.

Bytes are checked, not logs: checksums of LV ranges on the storage node, the base LUN's sector
counters on the host and LIO's per-LUN write statistics on the storage node."""
import json

VG = "vg-one-100"
IMAGE = "img-7"
BASE = "img-7-base"
KEY = "ds100-img7-base@1"
MIB = 1024 * 1024
CACHE_DISK = "/dev/ubdb"
DS = "/var/lib/one/datastores/0"


def initiator(host):
    return f"iqn.2026-11.lab.tm-iscsi:{host}"


def iqn_of(lv):
    return f"iqn.2026-11.io.tm-iscsi:{VG}.{lv}"


def refused(lab, node, *args):
    result = lab.node_helper(node, *args, check=False)
    assert result.returncode in (1, 2), (args, result.returncode, result.stdout)
    lines = [line for line in result.stderr.decode(errors="replace").splitlines()
             if line.strip() and not line.startswith("INFO: ")]
    assert len(lines) == 1, lines
    return lines[0]


class Lab:
    """An image on the storage node and, per disk, a clone and a map LV; LUNs attached on
    demand on a host."""

    def __init__(self, lab, image_mib, disks):
        self.lab = lab
        self.image_mib = image_mib
        lab.sh("storage", f"pvcreate -q /dev/ubdb && vgcreate -q {VG} /dev/ubdb")
        lab.node_helper("storage", "pool-ensure", "--vg", VG)
        lab.node_helper("storage", "lv-create", "--vg", VG, "--lv", IMAGE, "--size-mib",
                        str(image_mib))
        lab.sh("storage", f"dd if=/dev/urandom of=/dev/{VG}/{IMAGE} bs=1M count={image_mib} "
                          "oflag=direct status=none")
        lab.node_helper("storage", "lv-snapshot", "--vg", VG, "--origin", IMAGE, "--lv", BASE)
        for disk in disks:
            lab.node_helper("storage", "lv-snapshot", "--vg", VG, "--origin", IMAGE, "--lv",
                            disk)
            lab.node_helper("storage", "lv-create", "--vg", VG, "--lv", f"{disk}-map",
                            "--size-mib", "4")
        self.image_sha = self.storage_sha(IMAGE)
        self.luns = {}

    def storage_sha(self, lv, skip_mib=0, mib=None):
        mib = self.image_mib - skip_mib if mib is None else mib
        return self.lab.sh("storage", f"dd if=/dev/{VG}/{lv} bs=1M skip={skip_mib} count={mib} "
                                      "iflag=direct status=none | sha256sum").split()[0]

    def attach(self, host, lv):
        exported = self.lab.node_helper("storage", "export", "--vg", VG, "--lv", lv,
                                        "--initiator", initiator(host))
        out = self.lab.node_helper(host, "attach", "--portal", "storage", "--iqn",
                                   exported["iqn"], "--serial", exported["serial"])
        self.luns[(host, lv)] = {"portal": "storage", "iqn": exported["iqn"],
                                 "serial": exported["serial"]}
        return out["stable_path"]

    def detach(self, host, lv):
        self.lab.node_helper(host, "detach", "--portal", "storage", "--iqn", iqn_of(lv))

    def assemble_args(self, host, disk, mode, devs, wb_mib=64, link=True):
        args = ["stack-assemble", "--name", disk, "--mode", mode, "--clone-dev", devs[disk]]
        luns = {"clone": self.luns[(host, disk)]}
        if "read" in mode:
            args += ["--base-key", KEY, "--base-dev", devs[BASE], "--map-dev",
                     devs[f"{disk}-map"]]
            luns.update(base=self.luns[(host, BASE)], map=self.luns[(host, f"{disk}-map")])
        if "writeback" in mode:
            args += ["--wb-size-mib", str(wb_mib)]
        if link:
            args += ["--link", self.link(disk)]
        return args + ["--luns-json", json.dumps(luns)]

    @staticmethod
    def link(disk):
        vm = disk.split("-")[1]
        return f"{DS}/{vm}/disk.0"

    def attach_disk(self, host, disk, mode):
        devs = {disk: self.attach(host, disk)}
        if "read" in mode:
            devs[BASE] = self.attach(host, BASE)
            devs[f"{disk}-map"] = self.attach(host, f"{disk}-map")
        return devs


def write(lab, node, path, offset_mib, mib, seed, fsync=False):
    """Write seeded bytes (reproducible: the same seed gives the same bytes) and return their
    sha256."""
    script = f"""
import hashlib, mmap, os, random
buf = mmap.mmap(-1, {mib * MIB})
buf.write(random.Random({seed}).randbytes({mib * MIB}))
fd = os.open({path!r}, os.O_WRONLY | os.O_DIRECT)
os.pwritev(fd, [buf], {offset_mib * MIB})
{"os.fsync(fd)" if fsync else ""}
os.close(fd)
print(hashlib.sha256(buf).hexdigest())
"""
    return lab.sh(node, f"python3 - <<'EOF'\n{script}\nEOF").strip()


def sha(lab, node, path, skip_mib=0, mib=None):
    count = f"count={mib}" if mib is not None else ""
    return lab.sh(node, f"dd if={path} bs=1M skip={skip_mib} {count} iflag=direct status=none "
                        "| sha256sum").split()[0]


def sectors(lab, node, dev):
    """(sectors read, sectors written) of a SCSI disk since it appeared."""
    out = lab.sh(node, f"cat /sys/block/$(basename $(readlink -f {dev}))/stat").split()
    return int(out[2]), int(out[6])


def lio_written_mb(lab, lv):
    tpg = f"/sys/kernel/config/target/iscsi/{iqn_of(lv)}/tpgt_1"
    return int(lab.sh("storage", f"cat {tpg}/lun/lun_0/statistics/scsi_tgt_port/write_mbytes"))


def status(lab, node):
    return lab.node_helper(node, "cache-status")


def stack_of(st, name):
    return next(s for s in st["stacks"] if s["name"] == name)


def test_every_mode_reads_and_writes_back_and_is_idempotent(lab):
    disk = "vm-1-disk-0"
    img = Lab(lab, 32, [disk])
    devs = img.attach_disk("host1", disk, "read")

    # The root disk holds a filesystem: refused, and no VG appears.
    assert "holds data (TYPE=ext4)" in refused(lab, "host1", "cache-init", "--device",
                                               "/dev/ubda")
    first = lab.node_helper("host1", "cache-init", "--device", CACHE_DISK)
    assert first["created"] is True and first["vg"] == "tmi-cache" and first["size_bytes"] > 0
    assert lab.node_helper("host1", "cache-init", "--device", CACHE_DISK) == dict(
        first, created=False)
    # Only this host's cache VG (node.conf's CACHE_VG): the helper makes no other.
    assert "this host's is tmi-cache" in refused(lab, "host1", "cache-init", "--device",
                                                  "/dev/ubda", "--vg", "other")
    assert "tmi-cache" in lab.sh("host1", "vgs --noheadings -o vg_name")
    assert "other" not in lab.sh("host1", "vgs --noheadings -o vg_name")

    # Each mode writes its own MiB and reads back everything written before it. The map is only
    # trusted while every write went through it: read modes come first.
    written = {}
    tops = {"read": "/dev/mapper/tmi-top-", "read+writeback": "/dev/mapper/tmi-top-",
            "writeback": "/dev/mapper/tmi-wb-"}
    for i, mode in enumerate(("read", "read+writeback", "writeback", "none")):
        args = img.assemble_args("host1", disk, mode, devs)
        out = lab.node_helper("host1", *args)
        target = tops[mode] + disk if mode != "none" else devs[disk]
        assert out["top"] == target and out["mode"] == mode, out
        assert lab.sh("host1", f"readlink {img.link(disk)}").strip() == target
        if mode == "read+writeback":
            # Assemble twice: the same stack, kept; another mode on top of it: refused.
            again = lab.node_helper("host1", *args)
            assert again["kept"] is True and again["top"] == out["top"]
            line = refused(lab, "host1", *img.assemble_args("host1", disk, "writeback", devs))
            assert "exists in mode read+writeback" in line
            # Half built (an assemble killed before its top layer): completed, not refused.
            lab.sh("host1", f"dmsetup remove tmi-top-{disk}")
            again = lab.node_helper("host1", *args)
            assert again["kept"] is False and again["top"] == out["top"]
            assert again["layers"]["writeback"] == out["layers"]["writeback"]
        link = img.link(disk)
        written[i] = write(lab, "host1", link, 4 + i, 1, seed=i)
        for j, digest in written.items():
            assert sha(lab, "host1", link, 4 + j, 1) == digest, (mode, j)
        assert sha(lab, "host1", link, 8) == img.storage_sha(IMAGE, 8), mode
        assert sha(lab, "host1", link, 0, 4) == img.storage_sha(IMAGE, 0, 4), mode
        down = lab.node_helper("host1", "stack-teardown", "--name", disk, "--flush")
        assert down["existed"] is True and down["flushed"] is True
        assert down["read_cache_released"] is ("read" in mode)
        assert lab.node_helper("host1", "stack-teardown", "--name", disk, "--flush")[
            "existed"] is False
        assert lab.sh("host1", f"ls {DS}/1").strip() == ""
        assert lab.sh("host1", "dmsetup ls | grep -cE '^tmi-(top|wb|rc)-' || true").strip() == "0"

    # Everything is on the storage node; the image and the base are unchanged.
    for j, digest in written.items():
        assert img.storage_sha(disk, 4 + j, 1) == digest
    assert img.storage_sha(IMAGE) == img.image_sha == img.storage_sha(BASE)
    assert lio_written_mb(lab, BASE) == 0
    assert sectors(lab, "host1", devs[BASE])[1] == 0
    # The read cache stays (LVs kept, device gone) for the next VM of the image.
    caches = status(lab, "host1")["read_caches"]
    assert [(c["key"], c["refs"], c["active"]) for c in caches] == [(KEY, 0, False)]
    # Nothing is left that holds the LUNs: the front-end can detach them all.
    for lv in (disk, BASE, f"{disk}-map"):
        img.detach("host1", lv)


def test_second_vm_reads_locally_and_writeback_stays_on_host_until_flushed(lab):
    vm1, vm2 = "vm-1-disk-0", "vm-2-disk-0"
    img = Lab(lab, 128, [vm1, vm2])
    devs = img.attach_disk("host1", vm1, "read+writeback")
    devs.update(img.attach_disk("host1", vm2, "read+writeback"))
    lab.node_helper("host1", "cache-init", "--device", CACHE_DISK)

    lab.node_helper("host1", *img.assemble_args("host1", vm1, "read+writeback", devs))
    assert lab.sh("host1", f"cat /sys/block/$(basename $(readlink -f {devs[BASE]}))/ro"
                  ).strip() == "1"
    before = sectors(lab, "host1", devs[BASE])[0]
    assert sha(lab, "host1", img.link(vm1)) == img.image_sha
    vm1_read = (sectors(lab, "host1", devs[BASE])[0] - before) * 512
    assert vm1_read >= 128 * MIB

    # The second VM of the image: its assemble copies what VM 1 read, then it reads locally.
    out = lab.node_helper("host1", *img.assemble_args("host1", vm2, "read+writeback", devs))
    warmed = out["layers"]["read_cache"]["warmed"]
    assert warmed["complete"] is True and warmed["bytes"] >= 127 * MIB
    before = sectors(lab, "host1", devs[BASE])[0]
    assert sha(lab, "host1", img.link(vm2)) == img.image_sha
    vm2_read = (sectors(lab, "host1", devs[BASE])[0] - before) * 512
    assert vm2_read <= vm1_read // 10, (vm1_read, vm2_read)

    # Writes of VM 1 are dirty on the host: not on the storage node before the flush.
    digest = write(lab, "host1", img.link(vm1), 20, 8, seed=20)
    st = stack_of(status(lab, "host1"), vm1)
    assert st["dirty_blocks"] >= 8 * MIB // (64 * 1024), st
    assert img.storage_sha(vm1, 20, 8) == img.storage_sha(IMAGE, 20, 8)
    flushed = lab.node_helper("host1", "stack-flush", "--name", vm1)
    assert flushed["dirty_before_blocks"] >= 128 and flushed["dirty_after_blocks"] == 0
    assert img.storage_sha(vm1, 20, 8) == digest
    assert stack_of(status(lab, "host1"), vm1)["dirty_blocks"] == 0
    # Still running after the flush: more writes, read back; assemble restores write-back.
    assert lab.node_helper("host1", *img.assemble_args("host1", vm1, "read+writeback",
                                                       devs))["kept"] is True
    digest2 = write(lab, "host1", img.link(vm1), 40, 1, seed=40)
    assert sha(lab, "host1", img.link(vm1), 40, 1) == digest2
    assert stack_of(status(lab, "host1"), vm1)["dirty_blocks"] > 0

    # VM 2 writes, then is dropped: its clone on the storage node never sees the writes.
    write(lab, "host1", img.link(vm2), 30, 4, seed=30)
    down = lab.node_helper("host1", "stack-teardown", "--name", vm2, "--drop")
    assert down["dropped_dirty_blocks"] >= 64 and down["read_cache_released"] is False
    assert img.storage_sha(vm2) == img.image_sha

    down = lab.node_helper("host1", "stack-teardown", "--name", vm1, "--flush")
    assert down["flush"]["dirty_before_blocks"] > 0 and down["read_cache_released"] is True
    assert img.storage_sha(vm1, 40, 1) == digest2 and img.storage_sha(vm1, 20, 8) == digest

    # The image and its base were never written, by any path.
    assert img.storage_sha(IMAGE) == img.image_sha == img.storage_sha(BASE)
    assert lio_written_mb(lab, BASE) == 0
    assert sectors(lab, "host1", devs[BASE])[1] == 0
    cache = status(lab, "host1")["read_caches"][0]
    assert cache["refs"] == 0 and cache["hydrated_regions"] == cache["regions"]


def test_burst_deploy_reads_locally_after_the_periodic_warm_up(lab):
    """Both VMs of an image assembled before either read: no assemble had anything to copy.
    The host timer's `cache-warm` copies what the first VM read; the second then reads locally,
    and a warm-up cut short by its budget loses nothing (the next run finishes it)."""
    vm1, vm2 = "vm-1-disk-0", "vm-2-disk-0"
    img = Lab(lab, 64, [vm1, vm2])
    devs = img.attach_disk("host1", vm1, "read")
    devs.update(img.attach_disk("host1", vm2, "read"))
    lab.node_helper("host1", "cache-init", "--device", CACHE_DISK)
    for disk in (vm1, vm2):
        out = lab.node_helper("host1", *img.assemble_args("host1", disk, "read", devs))
        assert out["layers"]["read_cache"] is not None, out
        # udev's probe of the first stack reads a few regions; the disk is not read yet.
        assert (out["layers"]["read_cache"]["warmed"] or {}).get("bytes", 0) < 4 * MIB, out

    before = sectors(lab, "host1", devs[BASE])[0]
    assert sha(lab, "host1", img.link(vm1)) == img.image_sha
    vm1_read = (sectors(lab, "host1", devs[BASE])[0] - before) * 512
    assert vm1_read >= 60 * MIB

    # No time budget: nothing copied, but what VM 1 read is kept for the next run.
    cut = lab.node_helper("host1", "cache-warm", "--seconds", "0")
    assert cut["bytes"] == 0 and cut["complete"] is False, cut
    warm = lab.node_helper("host1", "cache-warm", "--seconds", "120")
    (cache,) = warm["caches"]
    assert cache["active"] is True and cache["complete"] is True, warm
    assert cache["bytes"] >= 60 * MIB, warm
    again = lab.node_helper("host1", "cache-warm", "--seconds", "120")
    assert again["bytes"] == 0 and again["complete"] is True, again

    before = sectors(lab, "host1", devs[BASE])[0]
    assert sha(lab, "host1", img.link(vm2)) == img.image_sha
    vm2_read = (sectors(lab, "host1", devs[BASE])[0] - before) * 512
    assert vm2_read <= vm1_read // 10, (vm1_read, vm2_read)
    print(f"burst deploy: VM 1 read {vm1_read / MIB:.1f} MiB from the base LUN, cache-warm "
          f"copied {cache['bytes'] / MIB:.1f} MiB in {cache['seconds']:.2f}s, VM 2 read "
          f"{vm2_read / MIB:.1f} MiB from the base LUN")
    rc = status(lab, "host1")["read_caches"][0]
    assert rc["read_hits"] > 0 and rc["hydrated_regions"] == rc["regions"], rc

    # The base was only read.
    assert lio_written_mb(lab, BASE) == 0 and img.storage_sha(BASE) == img.image_sha
    for disk in (vm1, vm2):
        lab.node_helper("host1", "stack-teardown", "--name", disk, "--drop")
    # No running VM of the image left: the timer has nothing to do.
    idle = lab.node_helper("host1", "cache-warm", "--seconds", "120")
    assert [c["active"] for c in idle["caches"]] == [False] and idle["bytes"] == 0, idle


def test_cold_move_to_another_host(lab):
    disk = "vm-1-disk-0"
    img = Lab(lab, 32, [disk])
    devs1 = img.attach_disk("host1", disk, "read+writeback")
    lab.node_helper("host1", "cache-init", "--device", CACHE_DISK)
    lab.node_helper("host1", *img.assemble_args("host1", disk, "read+writeback", devs1))
    a = write(lab, "host1", img.link(disk), 3, 2, seed=3)
    b = write(lab, "host1", img.link(disk), 17, 1, seed=17)
    # A 4 KiB write inside a region: the rest of the region must come along from the image.
    lab.sh("host1", f"dd if=/dev/zero of={img.link(disk)} bs=4k seek={25 * 256 + 3} count=1 "
                    "oflag=direct conv=notrunc status=none")
    expected = sha(lab, "host1", img.link(disk))
    lab.node_helper("host1", "stack-teardown", "--name", disk, "--flush")
    for lv in (disk, BASE, f"{disk}-map"):
        img.detach("host1", lv)

    devs2 = img.attach_disk("host2", disk, "read+writeback")
    lab.node_helper("host2", "cache-init", "--device", CACHE_DISK)
    out = lab.node_helper("host2", *img.assemble_args("host2", disk, "read+writeback", devs2))
    assert out["layers"]["read_cache"]["created"] is True
    assert sha(lab, "host2", img.link(disk)) == expected
    assert sha(lab, "host2", img.link(disk), 3, 2) == a
    assert sha(lab, "host2", img.link(disk), 17, 1) == b
    # The written regions came from the clone, and only those: the map says so.
    st = stack_of(status(lab, "host2"), disk)
    assert st["written_regions"] == 2 * 16 + 16 + 1, st
    lab.node_helper("host2", "stack-teardown", "--name", disk, "--flush")
    assert img.storage_sha(disk) == expected
    assert img.storage_sha(IMAGE) == img.image_sha == img.storage_sha(BASE)


def test_host_crash_with_dirty_data_is_flushed_by_activate(lab):
    disk = "vm-1-disk-0"
    img = Lab(lab, 32, [disk])
    devs = img.attach_disk("host1", disk, "read+writeback")
    lab.node_helper("host1", "cache-init", "--device", CACHE_DISK)
    lab.node_helper("host1", *img.assemble_args("host1", disk, "read+writeback", devs))
    digest = write(lab, "host1", img.link(disk), 6, 4, seed=6, fsync=True)
    assert stack_of(status(lab, "host1"), disk)["dirty_blocks"] >= 64
    assert img.storage_sha(disk, 6, 4) == img.storage_sha(IMAGE, 6, 4)

    lab.api.crash("host1")
    lab.api.boot("host1")
    assert lab.sh("host1", "dmsetup ls | grep -cE '^tmi-(top|wb|rc)-' || true").strip() == "0"
    out = lab.node_helper("host1", "activate")
    assert [(s["name"], s["reassembled"]) for s in out["stacks"]] == [(disk, True)]
    assert out["stacks"][0]["flushed_blocks"] >= 64
    assert img.storage_sha(disk, 6, 4) == digest
    assert sha(lab, "host1", img.link(disk), 6, 4) == digest
    assert sha(lab, "host1", img.link(disk), 10) == img.storage_sha(IMAGE, 10)
    # Activation again: nothing to do.
    again = lab.node_helper("host1", "activate")["stacks"][0]
    assert again["reassembled"] is False and again["flushed_blocks"] == 0
    lab.node_helper("host1", "stack-teardown", "--name", disk, "--flush")
    assert img.storage_sha(IMAGE) == img.image_sha == img.storage_sha(BASE)
    assert lio_written_mb(lab, BASE) == 0
