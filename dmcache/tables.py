"""Device-mapper tables of the stacks, built from plain values (no I/O here).

Sizes are in 512-byte sectors, as the kernel takes them. Devices may be given as paths or as
`major:minor`; the kernel always reports them as `major:minor` (see `devno`).
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

SECTOR = 512
CACHE_MODES = ("writeback", "writethrough", "passthrough")
CACHE_POLICIES = ("smq", "cleaner")
# 64 KiB: the smallest dm-cache block (32 KiB) doubled to halve its metadata, and the same as
# the clone regions above it, so a region copied into the write-back cache is one whole cache
# block, which dm-cache takes without reading the origin first (all writes stay local).
BLOCK_SECTORS = 128
REGION_SECTORS = 128
_DEVNO_RE = re.compile(r"^\d+:\d+$")
_WORD_RE = re.compile(r"^[A-Za-z0-9_./:-]+$")


def _word(value, what):
    text = str(value)
    if not _WORD_RE.match(text):
        raise ValueError(f"{what} {text!r} cannot go into a dm table")
    return text


def _positive(value, what):
    number = int(value)
    if number <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return number


def _power_of_two(value, what):
    number = _positive(value, what)
    if number & (number - 1):
        raise ValueError(f"{what} must be a power of two, got {value!r}")
    return number


def devno(dev_path):
    """`major:minor` of a block device path, as `dmsetup table` shows it."""
    if _DEVNO_RE.match(str(dev_path)):
        return str(dev_path)
    rdev = os.stat(dev_path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def linear(sectors, dev, offset=0):
    return f"0 {_positive(sectors, 'length')} linear {_word(dev, 'device')} {int(offset)}"


def cache(sectors, metadata, cache_dev, origin, block_sectors=BLOCK_SECTORS, mode="writeback",
          policy="smq", policy_args=(), features=(), core_args=None):
    """dm-cache: `<start> <len> cache <metadata> <cache> <origin> <block size> <#features>
    <features> <policy> <#policy args> <args>`. Core arguments (migration_threshold) travel with
    the policy arguments, as the kernel expects them."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode {mode!r} is not one of {', '.join(CACHE_MODES)}")
    if policy not in CACHE_POLICIES:
        raise ValueError(f"cache policy {policy!r} is not one of {', '.join(CACHE_POLICIES)}")
    block = _positive(block_sectors, "cache block size")
    if block % 64 or not 64 <= block <= 2097152:
        raise ValueError("cache block size must be a multiple of 64 sectors (32 KiB), "
                         f"between 32 KiB and 1 GiB, got {block_sectors}")
    feats = [mode] + [_word(f, "feature") for f in features]
    args = []
    for key, value in (core_args or {}).items():
        args += [_word(key, "core argument"), str(int(value))]
    args += [_word(a, "policy argument") for a in policy_args]
    return (f"0 {_positive(sectors, 'length')} cache {_word(metadata, 'metadata device')} "
            f"{_word(cache_dev, 'cache device')} {_word(origin, 'origin device')} {block} "
            f"{len(feats)} {' '.join(feats)} {policy} {len(args)}"
            + (f" {' '.join(args)}" if args else ""))


def clone(sectors, metadata, dest, source, region_sectors=REGION_SECTORS, features=(),
          core_args=None):
    """dm-clone: `<start> <len> clone <metadata> <destination> <source> <region size>
    [<#features> <features> [<#core args> <core args>]]`. Features: no_hydration,
    no_discard_passdown; core args: hydration_threshold, hydration_batch_size."""
    region = _power_of_two(region_sectors, "region size")
    if not 8 <= region <= 2097152:
        raise ValueError(f"region size must be between 8 sectors and 1 GiB, got {region}")
    text = (f"0 {_positive(sectors, 'length')} clone {_word(metadata, 'metadata device')} "
            f"{_word(dest, 'destination device')} {_word(source, 'source device')} {region}")
    feats = [_word(f, "feature") for f in features]
    args = []
    for key, value in (core_args or {}).items():
        args += [_word(key, "core argument"), str(int(value))]
    if feats or args:
        text += f" {len(feats)}" + (f" {' '.join(feats)}" if feats else "")
    if args:
        text += f" {len(args)} {' '.join(args)}"
    return text


# -- reading tables back ---------------------------------------------------------------------

@dataclass
class Table:
    start: int
    length: int
    target: str
    devices: Tuple[str, ...]
    block_sectors: int = 0  # cache block or clone region size
    features: List[str] = field(default_factory=list)
    policy: str = ""
    args: Dict[str, str] = field(default_factory=dict)


def parse(text):
    """One target line of `dmsetup table` -> Table: enough to tell whether a live device is the
    one a stack wants (which devices, which block size, which cache mode and policy)."""
    words = text.split()
    if len(words) < 3:
        raise ValueError(f"not a dm table line: {text!r}")
    start, length, target = int(words[0]), int(words[1]), words[2]
    rest = words[3:]
    if target == "linear":
        return Table(start, length, target, (rest[0],), args={"offset": rest[1]})
    if target == "cache":
        devices = tuple(rest[:3])
        block = int(rest[3])
        nfeat = int(rest[4])
        features = rest[5:5 + nfeat]
        policy = rest[5 + nfeat]
        nargs = int(rest[6 + nfeat])
        pargs = rest[7 + nfeat:7 + nfeat + nargs]
        return Table(start, length, target, devices, block, features, policy,
                     dict(zip(pargs[::2], pargs[1::2])))
    if target == "clone":
        devices = tuple(rest[:3])
        region = int(rest[3])
        features, args = [], {}
        if len(rest) > 4:
            nfeat = int(rest[4])
            features = rest[5:5 + nfeat]
            if len(rest) > 5 + nfeat:
                nargs = int(rest[5 + nfeat])
                cargs = rest[6 + nfeat:6 + nfeat + nargs]
                args = dict(zip(cargs[::2], cargs[1::2]))
        return Table(start, length, target, devices, region, features, "", args)
    return Table(start, length, target, tuple())


def cache_mode(features):
    for mode in CACHE_MODES:
        if mode in features:
            return mode
    return "writethrough"  # the kernel's default when the table names none


# -- sizes -----------------------------------------------------------------------------------

def cache_metadata_bytes(cache_bytes, block_sectors=BLOCK_SECTORS):
    """dm-cache metadata: ~4 MiB of fixed structures plus under 64 bytes per cache block
    (mapping, hint, dirty bit), with room to spare; at least 8 MiB as lvmcache uses."""
    blocks = -(-int(cache_bytes) // (block_sectors * SECTOR))
    return max(8 << 20, (4 << 20) + blocks * 64)


def clone_metadata_bytes(device_bytes, region_sectors=REGION_SECTORS):
    """dm-clone metadata: a superblock, a space map and one bit per region in an on-disk bitset
    of 4 KiB blocks (~32000 bits each), copied on write at each commit. 1 MiB plus 8 KiB per
    16000 regions leaves room for both copies twice over; at least 4 MiB (one LVM extent), which
    covers a disk of about 375 GiB with 64 KiB regions."""
    regions_ = regions(device_bytes, region_sectors)
    return max(4 << 20, (1 << 20) + -(-regions_ // 16000) * 8192)


def regions(device_bytes, region_sectors=REGION_SECTORS):
    return -(-int(device_bytes) // (region_sectors * SECTOR))
