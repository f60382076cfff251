"""`dmsetup status` of dm-cache and dm-clone targets as named fields.

The layouts are the kernel's (Documentation/admin-guide/device-mapper/cache.rst, clone.rst). A
target whose metadata failed reports `Fail` (or `Error`) instead of its fields: that parses into
a status with mode "fail", because a flush or teardown must stop on it, not crash on it.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from tm_iscsi.node.errors import NodeError


@dataclass
class CacheStatus:
    start: int
    length: int
    metadata_block_sectors: int = 0
    metadata_used: int = 0
    metadata_total: int = 0
    block_sectors: int = 0
    cache_used: int = 0
    cache_total: int = 0
    read_hits: int = 0
    read_misses: int = 0
    write_hits: int = 0
    write_misses: int = 0
    demotions: int = 0
    promotions: int = 0
    dirty: int = 0
    features: List[str] = field(default_factory=list)
    core_args: Dict[str, str] = field(default_factory=dict)
    policy: str = ""
    policy_args: Dict[str, str] = field(default_factory=dict)
    mode: str = "rw"  # rw | ro | fail
    needs_check: bool = False

    @property
    def io_mode(self):
        """writeback, writethrough or passthrough, from the features."""
        for mode in ("writeback", "writethrough", "passthrough"):
            if mode in self.features:
                return mode
        return "writethrough"

    @property
    def healthy(self):
        return self.mode == "rw" and not self.needs_check

    def as_dict(self):
        return {"dirty_blocks": self.dirty, "block_bytes": self.block_sectors * 512,
                "used_blocks": self.cache_used, "total_blocks": self.cache_total,
                "read_hits": self.read_hits, "read_misses": self.read_misses,
                "write_hits": self.write_hits, "write_misses": self.write_misses,
                "promotions": self.promotions, "demotions": self.demotions,
                "io_mode": self.io_mode, "policy": self.policy, "metadata_mode": self.mode,
                "needs_check": self.needs_check}


@dataclass
class CloneStatus:
    start: int
    length: int
    metadata_block_sectors: int = 0
    metadata_used: int = 0
    metadata_total: int = 0
    region_sectors: int = 0
    hydrated: int = 0
    regions: int = 0
    hydrating: int = 0
    features: List[str] = field(default_factory=list)
    core_args: Dict[str, str] = field(default_factory=dict)
    mode: str = "rw"  # rw | ro | fail
    needs_check: bool = False

    @property
    def healthy(self):
        return self.mode == "rw" and not self.needs_check

    def as_dict(self):
        return {"hydrated_regions": self.hydrated, "regions": self.regions,
                "region_bytes": self.region_sectors * 512, "metadata_mode": self.mode,
                "needs_check": self.needs_check}


def _pair(text, what):
    try:
        used, total = text.split("/")
        return int(used), int(total)
    except ValueError:
        raise ValueError(f"{what}: expected <used>/<total>, got {text!r}")


def _pairs(words):
    return dict(zip(words[::2], words[1::2]))


def _failed(words):
    return len(words) <= 1 and (not words or words[0] in ("Fail", "Error"))


def parse_cache(line):
    words = line.split()
    start, length, target = int(words[0]), int(words[1]), words[2]
    if target != "cache":
        raise ValueError(f"not a cache status line: {line!r}")
    rest = words[3:]
    if _failed(rest):
        return CacheStatus(start, length, mode="fail")
    meta_used, meta_total = _pair(rest[1], "metadata blocks")
    used, total = _pair(rest[3], "cache blocks")
    counters = [int(x) for x in rest[4:11]]
    i = 11
    nfeat = int(rest[i])
    features = rest[i + 1:i + 1 + nfeat]
    i += 1 + nfeat
    ncore = int(rest[i])
    core = _pairs(rest[i + 1:i + 1 + ncore])
    i += 1 + ncore
    policy = rest[i]
    npol = int(rest[i + 1])
    policy_args = _pairs(rest[i + 2:i + 2 + npol])
    i += 2 + npol
    tail = rest[i:]
    mode = tail[0] if tail else "rw"
    needs_check = len(tail) > 1 and tail[1] == "needs_check"
    return CacheStatus(
        start, length, metadata_block_sectors=int(rest[0]), metadata_used=meta_used,
        metadata_total=meta_total, block_sectors=int(rest[2]), cache_used=used,
        cache_total=total, read_hits=counters[0], read_misses=counters[1],
        write_hits=counters[2], write_misses=counters[3], demotions=counters[4],
        promotions=counters[5], dirty=counters[6], features=features, core_args=core,
        policy=policy, policy_args=policy_args, mode=mode.lower(), needs_check=needs_check)


def parse_clone(line):
    words = line.split()
    start, length, target = int(words[0]), int(words[1]), words[2]
    if target != "clone":
        raise ValueError(f"not a clone status line: {line!r}")
    rest = words[3:]
    if _failed(rest):
        return CloneStatus(start, length, mode="fail")
    meta_used, meta_total = _pair(rest[1], "metadata blocks")
    hydrated, regions = _pair(rest[3], "regions")
    i = 5
    nfeat = int(rest[i])
    features = rest[i + 1:i + 1 + nfeat]
    i += 1 + nfeat
    ncore = int(rest[i])
    core = _pairs(rest[i + 1:i + 1 + ncore])
    i += 1 + ncore
    tail = rest[i:]
    mode = tail[0] if tail else "rw"
    needs_check = "needs_check" in tail[1:]
    return CloneStatus(
        start, length, metadata_block_sectors=int(rest[0]), metadata_used=meta_used,
        metadata_total=meta_total, region_sectors=int(rest[2]), hydrated=hydrated,
        regions=regions, hydrating=int(rest[4]), features=features, core_args=core,
        mode=mode.lower(), needs_check=needs_check)


def parse(text):
    """The status of a one-target device -> CacheStatus, CloneStatus, or None for any other
    target (linear, error)."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one status line, got {len(lines)}")
    target = lines[0].split()[2] if len(lines[0].split()) > 2 else ""
    if target == "cache":
        return parse_cache(lines[0])
    if target == "clone":
        return parse_clone(lines[0])
    return None


def of(name, text) -> Optional[object]:
    """parse() with the device's name in the error an administrator would see."""
    if text is None:
        return None
    try:
        return parse(text)
    except (ValueError, IndexError) as err:
        raise NodeError(f"cannot parse `dmsetup status {name}`: {err}; output was "
                        f"{text.strip()[:200]!r}")
