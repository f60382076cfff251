"""The host's local cache VG: one local disk, plain linear LVs for cache data and metadata.

Nothing in it is precious on its own: a read cache can always be read again from the storage node,
and a write-back cache holds dirty data only while its stack exists. So the VG is made only on a
disk that holds nothing recognisable, and space is handed out in whole LVs, freed by removing
them.
"""
import os
import stat
from dataclasses import dataclass
from typing import List, Optional, Sequence

from tm_iscsi.node import lvm, nodeconf
from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError

# install.sh names the host's cache VG in node.conf (the site file's cache_vg).
DEFAULT_VG = nodeconf.get("CACHE_VG", "tmi-cache")
TAG = "tm_iscsi"


def tags(kind, **owner):
    """LV tags saying what an LV is for: orphans are found by them after a crash."""
    out = [TAG, f"{TAG}.kind={kind}"]
    for key, value in sorted(owner.items()):
        out.append(f"{TAG}.{key}={value}")
    return out


def tag_value(lv, key):
    prefix = f"{TAG}.{key}="
    for tag in lv.tags:
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return None


# -- cache-init ------------------------------------------------------------------------------

def _block_device(device):
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise NodeError(f"{device} does not exist on this host")
    if not stat.S_ISBLK(st.st_mode):
        raise NodeError(f"{device} is not a block device")
    return os.path.basename(os.path.realpath(device))


def signatures(device):
    """What blkid recognises on the device (filesystem, partition table, RAID, LVM...): TYPE or
    PTTYPE values; empty when the disk looks blank."""
    result = _run.run(["blkid", "-p", "-o", "export", device], timeout=30, check=False,
                      what=f"probing {device}")
    if result.returncode == 2:  # nothing found
        return []
    if result.returncode != 0:
        raise _run.failure(result, f"probing {device} for existing data")
    found = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key in ("TYPE", "PTTYPE") and value:
            found.append(f"{key}={value}")
    return found


def _in_use(kname, sysfs="/sys"):
    reasons = []
    block = os.path.join(sysfs, "class", "block", kname)
    try:
        parts = [e for e in os.listdir(block) if e.startswith(kname)]
    except OSError:
        parts = []
    if parts:
        reasons.append(f"has partitions ({', '.join(sorted(parts))})")
    try:
        holders = os.listdir(os.path.join(block, "holders"))
    except OSError:
        holders = []
    if holders:
        reasons.append(f"is held by {', '.join(sorted(holders))}")
    try:
        with open("/proc/mounts") as f:
            if any(line.split()[0] in (f"/dev/{kname}",) for line in f if line.strip()):
                reasons.append("is mounted")
    except OSError:
        pass
    return reasons


def init(device, vg=DEFAULT_VG):
    """Make the cache VG on a blank disk; a re-run on the same disk changes nothing."""
    kname = _block_device(device)
    rep = lvm.local_report(vg, missing_ok=True)
    owner = lvm.pv_vg(device)
    if rep is not None:
        if owner == vg:
            return {"vg": vg, "created": False, "size_bytes": rep.size_bytes}
        raise NodeError(f"volume group {vg} already exists on another disk; {device} is not "
                        "part of it (give that disk, or another --vg)")
    if owner:
        raise NodeError(f"{device} is a PV of volume group {owner}; refusing to use it for the "
                        "cache")
    if owner is None:
        # An orphan PV (owner "") is what an init interrupted before vgcreate leaves: reuse it.
        found = signatures(device)
        if found:
            raise NodeError(f"{device} holds data ({', '.join(found)}); refusing to make it the "
                            f"cache disk (if it is really free, wipe it first: wipefs -a "
                            f"{device})")
    busy = _in_use(kname)
    if busy:
        raise NodeError(f"{device} {' and '.join(busy)}; refusing to make it the cache disk")
    lvm.create_vg(vg, device)
    rep = lvm.local_report(vg)
    return {"vg": vg, "created": True, "size_bytes": rep.size_bytes}


# -- space -----------------------------------------------------------------------------------

def report(vg):
    return lvm.local_report(vg)


def allocate(vg, lv, size_bytes, lv_tags):
    lvm.create_linear(vg, lv, size_bytes, lv_tags)
    return lvm.lv_path(vg, lv)


def release(vg, lv, rep=None):
    """Remove the LV if it exists (True if it did)."""
    return bool(release_all(vg, [lv], rep))


def release_all(vg, lvs, rep=None):
    """Remove those of `lvs` that exist, in one lvremove; returns them."""
    rep = rep or lvm.local_report(vg)
    present = [lv for lv in lvs if rep.get(lv) is not None]
    if present:
        lvm.remove(vg, *present)
    return present


@dataclass
class Candidate:
    id: str
    size_bytes: int
    last_used: float


def plan_eviction(candidates: Sequence[Candidate], need_bytes, free_bytes) -> Optional[List[str]]:
    """Least recently used first, as few as make need_bytes fit; None if even all of them would
    not (then nothing should be evicted for nothing)."""
    if need_bytes <= free_bytes:
        return []
    chosen, freed = [], free_bytes
    for cand in sorted(candidates, key=lambda c: (c.last_used, c.id)):
        chosen.append(cand.id)
        freed += cand.size_bytes
        if freed >= need_bytes:
            return chosen
    return None
