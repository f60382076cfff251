"""Which blocks of a thin LV changed between two of its snapshots, from the thin pool's own
metadata: `thin_delta` on a metadata snapshot the pool reserves for the purpose (the live
metadata changes under a reader). Nothing of the LVs' data is read.

A pool has one metadata snapshot at a time, so the reservation is taken under the pool's lock;
a snapshot left reserved by a killed run is released and taken again."""
import json
import xml.etree.ElementTree as ET

from . import locks
from .lvm import dm_name
from . import run as _run
from .errors import NodeError

SECTOR = 512
TIMEOUT = 600
# thin_delta's verdicts: blocks mapped only in the older snapshot are discarded in the newer
# one (they read as zeros now), so they changed too.
_CHANGED = ("different", "right_only", "left_only")


def pool_devices(vg, pool):
    """(the pool's data-and-messages device, its metadata device) under /dev/mapper."""
    return f"/dev/mapper/{dm_name(vg, pool)}-tpool", f"/dev/mapper/{dm_name(vg, pool)}_tmeta"


def thin_ids_argv(vg, names):
    return ["lvs", "--noheadings", "--reportformat", "json", "-o", "lv_name,thin_id",
            *[f"{vg}/{n}" for n in names]]


def thin_ids(vg, names):
    result = _run.run(thin_ids_argv(vg, names), timeout=60)
    rows = json.loads(result.stdout)["report"][0]["lv"]
    ids = {row["lv_name"]: row.get("thin_id", "").strip() for row in rows}
    missing = [n for n in names if not ids.get(n, "").isdigit()]
    if missing:
        raise NodeError(f"{vg}/{missing[0]} has no thin device id; is it a thin LV?")
    return {n: int(ids[n]) for n in names}


def _message(tpool, text, check=True):
    return _run.run(["dmsetup", "message", tpool, "0", text], timeout=60, check=check)


def delta_argv(tmeta, old_id, new_id):
    return ["thin_delta", "--metadata-snap", "--thin1", str(old_id), "--thin2", str(new_id),
            tmeta]


def parse(text, size_bytes):
    """thin_delta's XML -> merged [(offset, length)] in bytes of the changed blocks, within the
    LV's `size_bytes`."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise NodeError(f"thin_delta printed no readable report: {err}")
    block = int(root.get("data_block_size", "0")) * SECTOR
    if block <= 0:
        raise NodeError("thin_delta's report gives no data block size")
    ranges = []
    for element in root.iter():
        if element.tag not in _CHANGED:
            continue
        start = int(element.get("begin")) * block
        length = min(int(element.get("length")) * block, size_bytes - start)
        if length <= 0:
            continue
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
        else:
            ranges.append((start, length))
    ranges.sort()
    return ranges


def changed_ranges(vg, pool, old_lv, new_lv, size_bytes):
    """The blocks of `new_lv` that differ from `old_lv` (two thin snapshots of one LV)."""
    ids = thin_ids(vg, [old_lv, new_lv])
    tpool, tmeta = pool_devices(vg, pool)
    with locks.lock("thin-metadata", f"{vg}/{pool}"):
        reserved = _message(tpool, "reserve_metadata_snap", check=False)
        if reserved.returncode != 0:
            # A run killed between reserve and release left it: nobody else reads it (the lock).
            _message(tpool, "release_metadata_snap", check=False)
            _message(tpool, "reserve_metadata_snap")
        try:
            report = _run.run(delta_argv(tmeta, ids[old_lv], ids[new_lv]), timeout=TIMEOUT)
        finally:
            _message(tpool, "release_metadata_snap", check=False)
    return parse(report.stdout, size_bytes)


