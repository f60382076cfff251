#!/usr/bin/env python3
"""Incremental backups against the bytes that changed and against a full backup of the same
disk, in one run on the lab (issue 14): a 4 GiB VM disk (a clone of an image with 2 GiB of
data), a chain started with a full point, then an increment after 1% of the disk changed and
one after 10% changed, then a FULL backup of the same disk as the baseline.

Measured per backup: the bytes the storage node read for it (the sectors read from the
point's thin device, counted by the kernel), the bytes shipped (the qcow2 file in the VM's
backup directory, what the backup datastore copies away), and the seconds of prebackup_live.
The fixed metadata of an increment is that of one with nothing changed, measured first.

    bench/bench_backup.py [--reuse]

Result: bench/results/backup.json, keys `incremental_over_changed` {"1%", "10%"} (the larger of
bytes read and bytes shipped, each less what an increment with nothing changed reads and ships:
the login's device probe and the qcow2 metadata, over the bytes changed) and
`incremental_over_full_seconds` {"1%", "10%"}."""
import argparse
import json
import random
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import api  # noqa: E402
from lab.session import LabSession  # noqa: E402
from harness.cloud import IMAGE_VG, SYSDIR, Cloud  # noqa: E402
from harness.oned import OnedStandIn  # noqa: E402

DISK_MIB = 4096
DATA_MIB = 2048
VM_DIR = "host1:/var/lib/one//datastores/101/0"
LINK = f"{SYSDIR}/0/disk.0"
BACKUP_DIR = f"{SYSDIR}/0/backup"
POINT = "vm-0-disk-0-backup-{}"
MIB = 1 << 20


def _backup_config(cloud, mode, last=None):
    def change(root):
        config = root.find("BACKUPS/BACKUP_CONFIG")
        for name, value in (("MODE", mode), ("LAST_INCREMENT_ID", last)):
            node = config.find(name)
            if node is not None:
                config.remove(node)
            if value is not None:
                ET.SubElement(config, name).text = str(value)
    cloud.oned.edit_with("vm", 0, change)
    return cloud.oned.xml("vm", 0)


def _point_bytes_read(cloud, number):
    """Bytes read from the point's thin device since it was made (sectors read, /sys)."""
    dm = f"{IMAGE_VG.replace('-', '--')}-{POINT.format(number).replace('-', '--')}"
    out = cloud.lab.sh("storage", f"cat /sys/block/$(basename $(readlink -f /dev/mapper/{dm}))"
                                  "/stat")
    return int(out.split()[2]) * 512


def _backup(cloud, mode, last, number, keep_point=True):
    vm_xml = _backup_config(cloud, mode, last)
    start = time.monotonic()
    result = cloud.tm_action(f"PREBACKUP_LIVE iscsi_lvm {VM_DIR} 0 one-0 - 0 101", stdin=vm_xml)
    seconds = time.monotonic() - start
    if not result.success:
        raise SystemExit(f"backup {number}: {result.info}")
    name = f"disk.0.{number}"
    shipped = int(cloud.lab.sh("host1", f"stat -c %s {BACKUP_DIR}/{name}").strip())
    read = _point_bytes_read(cloud, number) if keep_point else None
    done = cloud.tm_action(f"POSTBACKUP_LIVE iscsi_lvm {VM_DIR} 0 one-0 - 0 101", stdin=vm_xml)
    if not done.success:
        raise SystemExit(f"postbackup {number}: {done.info}")
    return {"seconds": round(seconds, 2), "bytes_shipped": shipped, "bytes_read": read}


def _change(cloud, fraction, rng, used):
    """Write `fraction` of the disk (whole MiBs at random offsets not written before)."""
    count = int(DISK_MIB * fraction)
    free = [m for m in range(DISK_MIB) if m not in used]
    chosen = sorted(rng.sample(free, count))
    used.update(chosen)
    script = "\n".join(f"dd if=/dev/urandom of={LINK} bs=1M seek={m} count=1 oflag=direct "
                       "conv=notrunc status=none" for m in chosen)
    cloud.lab.sh("host1", script, timeout=3600)
    return count * MIB


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "backup.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with api.booted(args.reuse):
        lab = LabSession(api)
        with tempfile.TemporaryDirectory() as workdir, OnedStandIn() as oned:
            cloud = Cloud(lab, oned, workdir)
            cloud.prepare_storage()
            cloud.load_datastores()
            cloud.set_cache_mode("none")
            mkfs = cloud.ds_action("mkfs", 0, cloud.ds_xml(
                "02-image-create-datablock", "01-ds-mkfs", ID=0, SIZE=DISK_MIB, FS="raw"))
            if not mkfs.success:
                raise SystemExit(f"image 0: {mkfs.info}")
            lab.sh("storage", f"dd if=/dev/urandom of=/dev/{IMAGE_VG}/img-0 bs=1M "
                              f"count={DATA_MIB} oflag=direct status=none", timeout=3600)
            # The host's root filesystem is small: the system datastore on a local LV, as a
            # host's own disk would hold it.
            lab.sh("host1", f"lvcreate -q -y -L 5G -n sysds tmi-cache && "
                            f"mkfs.ext4 -q /dev/tmi-cache/sysds && mkdir -p {SYSDIR} && "
                            f"mount /dev/tmi-cache/sysds {SYSDIR} && "
                            f"chown oneadmin: {SYSDIR}")
            try:
                cloud.load_vm("28-backup-full-live", "01-tm-prebackup_live")
                cloud.transfer(f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 {VM_DIR}/disk.0 0 "
                               "100\n")
                result = {"disk_mib": DISK_MIB, "data_mib": DATA_MIB, "cache_mode": "none",
                          "backups": {}}
                used = set()
                result["backups"]["full_point"] = _backup(cloud, "INCREMENT", -1, 0)
                result["backups"]["empty_increment"] = _backup(cloud, "INCREMENT", 0, 1)
                empty = result["backups"]["empty_increment"]
                fixed_read, fixed = empty["bytes_read"], empty["bytes_shipped"]
                for number, (label, fraction) in enumerate((("1%", 0.01), ("10%", 0.10)), 2):
                    changed = _change(cloud, fraction, rng, used)
                    row = _backup(cloud, "INCREMENT", number - 1, number)
                    row["bytes_changed"] = changed
                    result["backups"][label] = row
                full = _backup(cloud, "FULL", None, 0, keep_point=False)
                result["backups"]["full"] = full
                result["fixed_metadata_bytes"] = {"read": fixed_read, "shipped": fixed}
                result["incremental_over_changed"] = {}
                result["incremental_over_full_seconds"] = {}
                for label in ("1%", "10%"):
                    row = result["backups"][label]
                    over = max(row["bytes_read"] - fixed_read, row["bytes_shipped"] - fixed)
                    result["incremental_over_changed"][label] = round(
                        over / row["bytes_changed"], 3)
                    result["incremental_over_full_seconds"][label] = round(
                        row["seconds"] / full["seconds"], 3)
                result["full_bytes_read"] = result["backups"]["full_point"]["bytes_read"]
                Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
                print(json.dumps(result, indent=2, sort_keys=True))
            finally:
                lab.sh("host1", f"umount {SYSDIR} || true; lvremove -q -y tmi-cache/sysds || "
                                "true", check=False)


if __name__ == "__main__":
    main()
