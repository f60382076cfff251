"""Everything the node helper knows about LVM: command syntax, report parsing, thin pools.

One `vgs` call with LV fields reports the VG, its thin pool and all its LVs at once: inside UML
every LVM command costs about a second, and on a real storage node with hundreds of LVs the
metadata scan dominates too, so callers get a whole `VGReport` and look things up in it.
"""
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import run as _run
from .errors import NodeError

MIB = 1024 * 1024
# LVM allows [A-Za-z0-9_+.-/=!:&#] in tags; `!`, `&` and `#` are left out because they are
# shell metacharacters and nothing tm_iscsi writes needs them.
_TAG_RE = re.compile(r"^[A-Za-z0-9_+.:/=-]{1,128}$")
_VG_FIELDS = ["vg_name", "vg_size", "vg_free", "vg_extent_size"]
_LV_FIELDS = ["lv_name", "lv_size", "origin", "lv_tags", "lv_attr", "pool_lv", "data_percent",
              "metadata_percent", "lv_metadata_size", "segtype"]
# lvcreate/lvremove touch udev and the thin pool's metadata; in UML they take 1-3 s, on a busy
# node more. Reports are quick.
_CHANGE_TIMEOUT = 180
_REPORT_TIMEOUT = 60


def valid_tag(tag):
    return bool(_TAG_RE.match(str(tag)))


def lv_path(vg, lv):
    return f"/dev/{vg}/{lv}"


def dm_name(vg, lv):
    """device-mapper's name of an LV (a dash inside a name is doubled)."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def has_active_lv(vg, dev="/dev", sysfs="/sys"):
    """True if /dev/VG links to an active LV of VG (udev makes those links): the VG exists, known
    without a `vgs` of it. False says nothing either way (no LV of it active, or no udev)."""
    folder = os.path.join(dev, vg)
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    for lv in names:
        kname = os.path.basename(os.path.realpath(os.path.join(folder, lv)))
        try:
            with open(os.path.join(sysfs, "block", kname, "dm", "name")) as f:
                if f.read().strip() == dm_name(vg, lv):
                    return True
        except OSError:
            continue
    return False


@dataclass
class LV:
    vg: str
    name: str
    size_bytes: int
    origin: str = ""
    tags: List[str] = field(default_factory=list)
    attr: str = ""
    pool: str = ""
    segtype: str = ""
    data_percent: Optional[float] = None
    metadata_percent: Optional[float] = None
    metadata_bytes: Optional[int] = None
    # Only reports that ask for lv_uuid fill it (local_report): an LV re-created under the same
    # name is a different LV, and what was recorded about the old one must not carry over.
    uuid: str = ""

    @property
    def active(self):
        return len(self.attr) > 4 and self.attr[4] == "a"

    @property
    def is_thin(self):
        return self.segtype == "thin"

    @property
    def is_thin_pool(self):
        return self.segtype == "thin-pool"

    @property
    def path(self):
        return lv_path(self.vg, self.name)

    @property
    def provisioned_nothing(self):
        """True when no block of this thin LV is mapped in the pool, so it reads as zeros
        everywhere. LVM never rounds a non-zero fill down to 0.00, so the report is exact."""
        return self.is_thin and self.data_percent == 0.0


@dataclass
class VGReport:
    name: str
    size_bytes: Optional[int]
    free_bytes: Optional[int]
    extent_bytes: Optional[int]
    lvs: Dict[str, LV]

    def get(self, lv):
        return self.lvs.get(lv)

    def round_up(self, size_bytes):
        """The size LVM will really give a request: whole extents (LVM rounds up)."""
        extent = self.extent_bytes or 4 * MIB
        return -(-int(size_bytes) // extent) * extent


def _num(value, conv=int):
    value = (value or "").strip()
    if value == "":
        return None
    return conv(value)


def _report_rows(text, key):
    """Rows of `--reportformat json` output; LVM nests them as {"report": [{key: [...]}]}."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise NodeError(f"cannot parse LVM report ({err}); is this LVM >= 2.02.158?")
    rows = []
    for section in doc.get("report", []):
        rows.extend(section.get(key, []))
    return rows


def parse_vg_report(vg, text):
    """`vgs -o <vg fields>,<lv fields>` JSON -> VGReport (one row per LV; none for an empty
    VG, whose sizes are then unknown)."""
    lvs = {}
    size = free = extent = None
    for row in _report_rows(text, "vg"):
        size = _num(row.get("vg_size"))
        free = _num(row.get("vg_free"))
        extent = _num(row.get("vg_extent_size"))
        name = (row.get("lv_name") or "").strip()
        if not name:
            continue
        tags = [t for t in (row.get("lv_tags") or "").split(",") if t]
        lvs[name] = LV(
            vg=vg, name=name, size_bytes=_num(row.get("lv_size")) or 0,
            origin=(row.get("origin") or "").strip(), tags=tags,
            attr=(row.get("lv_attr") or "").strip(), pool=(row.get("pool_lv") or "").strip(),
            segtype=(row.get("segtype") or "").strip(),
            data_percent=_num(row.get("data_percent"), float),
            metadata_percent=_num(row.get("metadata_percent"), float),
            metadata_bytes=_num(row.get("lv_metadata_size")),
            uuid=(row.get("lv_uuid") or "").strip())
    return VGReport(vg, size, free, extent, lvs)


def report_argv(vg):
    return ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", ",".join(_VG_FIELDS + _LV_FIELDS), vg]


def _vg_missing(result):
    return result.returncode != 0 and re.search(r"Volume group \S+ not found", result.stderr)


def report(vg, missing_ok=False):
    """The VG and all its visible LVs. A missing VG raises a NodeError saying how to make it
    (or returns None with missing_ok)."""
    result = _run.run(report_argv(vg), timeout=_REPORT_TIMEOUT, check=False)
    if _vg_missing(result):
        if missing_ok:
            return None
        raise NodeError(f"volume group {vg} does not exist on this node; create it first "
                        f"(pvcreate /dev/DISK && vgcreate {vg} /dev/DISK) or fix the datastore's "
                        "VG name")
    if result.returncode != 0:
        raise _run.failure(result, f"reading volume group {vg}")
    return parse_vg_report(vg, result.stdout)


def pool_status(rep, pool):
    """Data and metadata capacity of the thin pool (not of the VG) in bytes."""
    lv = rep.get(pool)
    if lv is None or not lv.is_thin_pool:
        raise NodeError(f"thin pool {rep.name}/{pool} does not exist; run pool-ensure "
                        f"--vg {rep.name} --pool {pool}")
    data_pct = lv.data_percent or 0.0
    meta_pct = lv.metadata_percent or 0.0
    meta_total = lv.metadata_bytes or 0
    return {
        "vg": rep.name, "pool": pool,
        "data_total_bytes": lv.size_bytes,
        "data_used_bytes": int(round(lv.size_bytes * data_pct / 100.0)),
        "data_percent": data_pct,
        "metadata_total_bytes": meta_total,
        "metadata_used_bytes": int(round(meta_total * meta_pct / 100.0)),
        "metadata_percent": meta_pct,
        "vg_free_bytes": rep.free_bytes or 0,
    }


def _addtags(tags):
    argv = []
    for tag in tags:
        argv += ["--addtag", tag]
    return argv


def create_thin_pool_argv(vg, pool, data_percent):
    # Zeroing stays on (the default): a new LV must never show another tenant's old blocks.
    return ["lvcreate", "-q", "-y", "--type", "thin-pool", "-l", f"{int(data_percent)}%VG",
            "-n", pool, vg]


def create_thin_pool(vg, pool, data_percent):
    _run.run(create_thin_pool_argv(vg, pool, data_percent), timeout=_CHANGE_TIMEOUT,
             what=f"creating thin pool {vg}/{pool}")


def _monitoring(pool_active):
    # dmeventd watches the pool, not its thin LVs (autoextend, full-pool warnings); a pool that
    # is active already was registered (or not) when it was activated, and a thin LV made in it
    # changes nothing there. Leaving dmeventd alone then saves a quarter of each lvcreate
    # (0.25-0.3 s inside the lab's VMs), taken under the VG lock every clone waits for. A pool
    # this command activates is registered as usual.
    return ["--ignoremonitoring"] if pool_active else []


def create_thin_argv(vg, pool, lv, size_bytes, tags=(), pool_active=False):
    return (["lvcreate", "-q", "-y"] + _monitoring(pool_active) +
            ["--type", "thin", "--thinpool", pool, "-V", f"{int(size_bytes)}b", "-n", lv] +
            _addtags(tags) + [vg])


def create_thin(vg, pool, lv, size_bytes, tags=(), pool_active=False):
    _run.run(create_thin_argv(vg, pool, lv, size_bytes, tags, pool_active),
             timeout=_CHANGE_TIMEOUT, what=f"creating thin LV {vg}/{lv}")


def create_snapshot_argv(vg, origin, lv, tags=(), active=True, pool_active=False):
    # -kn: thin snapshots are created with the activation-skip flag, which would keep them
    # inactive at boot (`vgchange -aay`) and so off the LIO export that `targetctl restore`
    # brings back. Without the flag they are active right away, like any thin LV. A snapshot
    # nothing reads until it is needed (a checkpoint) keeps the flag: no device to make, and
    # the origin is suspended for less time.
    return (["lvcreate", "-q", "-y"] + _monitoring(pool_active) +
            ["--snapshot", "--setactivationskip", "n" if active else "y", "-n", lv] +
            _addtags(tags) + [f"{vg}/{origin}"])


def create_snapshot(vg, origin, lv, tags=(), active=True, pool_active=False):
    _run.run(create_snapshot_argv(vg, origin, lv, tags, active, pool_active),
             timeout=_CHANGE_TIMEOUT, what=f"creating thin snapshot {vg}/{lv} of {origin}")


def extend_argv(vg, lv, size_bytes):
    return ["lvextend", "-q", "-y", "-L", f"{int(size_bytes)}b", f"{vg}/{lv}"]


def extend(vg, lv, size_bytes):
    _run.run(extend_argv(vg, lv, size_bytes), timeout=_CHANGE_TIMEOUT,
             what=f"extending {vg}/{lv}")


def activate_argv(vg, lv):
    # -K: also activate an LV that carries the activation-skip flag (older thin snapshots).
    return ["lvchange", "-q", "-y", "-ay", "-K", f"{vg}/{lv}"]


def activate(vg, lv):
    _run.run(activate_argv(vg, lv), timeout=_CHANGE_TIMEOUT, what=f"activating {vg}/{lv}")


def rename_argv(vg, lv, new_name):
    return ["lvrename", "-q", vg, lv, new_name]


def rename(vg, lv, new_name):
    _run.run(rename_argv(vg, lv, new_name), timeout=_CHANGE_TIMEOUT,
             what=f"renaming {vg}/{lv} to {new_name}")


def remove_argv(vg, *lvs):
    return ["lvremove", "-q", "-y"] + [f"{vg}/{lv}" for lv in lvs]


def remove(vg, *lvs):
    """One lvremove for all of `lvs`: LVM's start, device scan and VG lock once, not per LV."""
    _run.run(remove_argv(vg, *lvs), timeout=_CHANGE_TIMEOUT,
             what=f"removing {', '.join(f'{vg}/{lv}' for lv in lvs)}")



# -- a host's local cache VG: plain linear LVs on one local disk --------------------------------

def local_report_argv(vg):
    return ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", ",".join(_VG_FIELDS + _LV_FIELDS + ["lv_uuid"]), vg]


def local_report(vg, missing_ok=False):
    """Like report(), with each LV's uuid."""
    result = _run.run(local_report_argv(vg), timeout=_REPORT_TIMEOUT, check=False)
    if _vg_missing(result):
        if missing_ok:
            return None
        raise NodeError(f"volume group {vg} does not exist on this host; run cache-init "
                        f"--device DISK --vg {vg} first")
    if result.returncode != 0:
        raise _run.failure(result, f"reading volume group {vg}")
    rep = parse_vg_report(vg, result.stdout)
    if rep.size_bytes is None:
        # A VG without LVs has no rows when LV fields are asked for: ask for the VG alone.
        result = _run.run(vg_only_report_argv(vg), timeout=_REPORT_TIMEOUT,
                          what=f"reading volume group {vg}")
        only = parse_vg_report(vg, result.stdout)
        rep.size_bytes, rep.free_bytes, rep.extent_bytes = (only.size_bytes, only.free_bytes,
                                                            only.extent_bytes)
    return rep


def vg_only_report_argv(vg):
    return ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", ",".join(_VG_FIELDS), vg]


def pv_report_argv(device):
    return ["pvs", "--reportformat", "json", "-o", "pv_name,vg_name", device]


def parse_pv_report(text):
    """`pvs -o pv_name,vg_name DEV` JSON -> the VG name ("" for a PV in no VG)."""
    rows = _report_rows(text, "pv")
    return (rows[0].get("vg_name") or "").strip() if rows else None


def pv_vg(device):
    """None if the device is not an LVM PV; else the name of its VG ("" when in none)."""
    result = _run.run(pv_report_argv(device), timeout=_REPORT_TIMEOUT, check=False)
    if result.returncode != 0:
        if re.search(r"Failed to find physical volume|not a PV|No physical volume",
                     result.stderr + result.stdout):
            return None
        raise _run.failure(result, f"checking whether {device} is an LVM PV")
    return parse_pv_report(result.stdout)


def create_pv_argv(device):
    return ["pvcreate", "-q", "-y", device]


def create_vg_argv(vg, device):
    return ["vgcreate", "-q", "-y", vg, device]


def create_vg(vg, device):
    """PV and VG on a whole, blank disk."""
    _run.run(create_pv_argv(device), timeout=_CHANGE_TIMEOUT, what=f"making {device} an LVM PV")
    _run.run(create_vg_argv(vg, device), timeout=_CHANGE_TIMEOUT,
             what=f"creating volume group {vg} on {device}")


def create_linear_argv(vg, lv, size_bytes, tags=()):
    # -Zy: the first 4 KiB are zeroed, which is how dm-cache and dm-clone tell a new metadata
    # device (they format an all-zero superblock) from one that holds state; -Wy: no stale
    # signature of a former LV shows through to udev's probes.
    return (["lvcreate", "-q", "-y", "--type", "linear", "-Zy", "-Wy",
             "-L", f"{int(size_bytes)}b", "-n", lv] + _addtags(tags) + [vg])


def create_linear(vg, lv, size_bytes, tags=()):
    _run.run(create_linear_argv(vg, lv, size_bytes, tags), timeout=_CHANGE_TIMEOUT,
             what=f"creating LV {vg}/{lv}")


def activate_vg_argv(vg):
    return ["vgchange", "-q", "-ay", vg]


def activate_vg(vg):
    """Every LV of the VG active: at boot nothing may have done it (no autoactivation service
    on the host, or a filter that only the helper's own calls satisfy)."""
    _run.run(activate_vg_argv(vg), timeout=_CHANGE_TIMEOUT, what=f"activating volume group {vg}")


def change_tags_argv(vg, lv, add=(), delete=()):
    argv = ["lvchange", "-q"]
    for tag in add:
        argv += ["--addtag", tag]
    for tag in delete:
        argv += ["--deltag", tag]
    return argv + [f"{vg}/{lv}"]


def change_tags(vg, lv, add=(), delete=()):
    _run.run(change_tags_argv(vg, lv, add, delete), timeout=_CHANGE_TIMEOUT,
             what=f"changing the tags of {vg}/{lv}")
