"""What a host records about its stacks and read caches, on its own disk.

Device-mapper tables live in kernel memory: after a crash or a reboot nothing says which LUNs a
disk was made of, which local LVs hold its dirty blocks, or where its link was. A stack's state file
says all of it (under <state dir>/stacks/<name>.json) and is written before the first device of
the stack is made, so a stack interrupted while being built is still found, completed or torn down.

A read cache's record (<state dir>/readcache/<id>.json) says which base key its LVs hold, when it
was last used, and which regions were copied locally (a bitmap file beside it). The number of
stacks using a read cache is never stored: it is counted from the stack files, so it cannot drift
from them.

Files are replaced atomically (write, fsync, rename, fsync of the folder): a power cut leaves the
old file or the new one. They hold no secrets (no CHAP passwords: the iSCSI node records have
those).
"""
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from tm_iscsi import protocol
from tm_iscsi.node.errors import NodeError

STATE_DIR = os.environ.get("TM_ISCSI_STATE_DIR", "/var/lib/tm_iscsi")
VERSION = 1
MODES = protocol.MODES
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,120}$")


def stacks_dir():
    return os.path.join(STATE_DIR, "stacks")


def readcache_dir():
    return os.path.join(STATE_DIR, "readcache")


def _file(folder, name, suffix):
    if not _FILE_RE.match(name):
        raise NodeError(f"{name!r} cannot name a state file")
    return os.path.join(folder, name + suffix)


def write_atomic(path, data: bytes):
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise NodeError(f"state file {path} is damaged ({err}); move it away and re-run")


def _remove(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# -- stacks ----------------------------------------------------------------------------------

@dataclass
class Lun:
    portal: str
    iqn: str
    serial: str


@dataclass
class WriteBack:
    vg: str
    data_lv: str
    meta_lv: str
    size_bytes: int
    block_sectors: int


@dataclass
class StackState:
    name: str
    mode: str
    devices: Dict[str, Optional[str]]  # clone, base, map: stable paths as assemble got them
    vg: str = "tmi-cache"
    luns: Dict[str, Lun] = field(default_factory=dict)
    link: Optional[str] = None
    base_key: Optional[str] = None
    read_cache: Optional[str] = None  # the read cache id (see readcache.cache_id)
    wb: Optional[WriteBack] = None
    phase: str = "assembling"  # -> assembled
    degraded: Optional[str] = None
    # A checkpoint in progress (dmcache/checkpoint.py): its token, and whether the write-back
    # layer goes back to write-back at its end. Any other change of the layer's mode clears it.
    # The disk's write-back epoch (protocol.WB_EPOCH_TAG) the write-back cache was made in.
    wb_epoch: Optional[str] = None
    checkpoint: Optional[str] = None
    checkpoint_writeback: bool = False
    created: float = 0.0
    updated: float = 0.0
    version: int = VERSION

    def to_json(self):
        doc = asdict(self)
        return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc):
        doc = dict(doc)
        if doc.get("version") != VERSION:
            raise NodeError(f"stack state of {doc.get('name')!r} has version "
                            f"{doc.get('version')!r}; this helper reads version {VERSION}")
        doc["luns"] = {k: Lun(**v) for k, v in (doc.get("luns") or {}).items()}
        if doc.get("wb"):
            doc["wb"] = WriteBack(**doc["wb"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


def stack_path(name):
    return _file(stacks_dir(), name, ".json")


def save_stack(st: StackState):
    now = time.time()
    st.created = st.created or now
    st.updated = now
    write_atomic(stack_path(st.name), st.to_json())


def load_stack(name) -> Optional[StackState]:
    doc = _read_json(stack_path(name))
    return StackState.from_dict(doc) if doc is not None else None


def delete_stack(name):
    return _remove(stack_path(name))


def list_stacks() -> List[StackState]:
    try:
        names = sorted(os.listdir(stacks_dir()))
    except FileNotFoundError:
        return []
    result = []
    for entry in names:
        if entry.endswith(".json") and _FILE_RE.match(entry[:-5]):
            st = load_stack(entry[:-5])
            if st is not None:
                result.append(st)
    return result


# -- read caches -----------------------------------------------------------------------------

@dataclass
class ReadCacheRecord:
    id: str
    key: str
    vg: str
    data_lv: str
    meta_lv: str
    data_uuid: str
    meta_uuid: str
    size_bytes: int  # of the base (the source); the data LV is at least as large
    region_sectors: int
    base_serial: Optional[str] = None
    created: float = 0.0
    last_used: float = 0.0
    version: int = VERSION

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc):
        if doc.get("version") != VERSION:
            raise NodeError(f"read cache record {doc.get('id')!r} has version "
                            f"{doc.get('version')!r}; this helper reads version {VERSION}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


def record_path(cache_id):
    return _file(readcache_dir(), cache_id, ".json")


def bitmap_path(cache_id, kind="bitmap"):
    """kind "bitmap": regions copied locally; "pending": regions VMs read, not copied yet."""
    if kind not in ("bitmap", "pending"):
        raise ValueError(kind)
    return _file(readcache_dir(), cache_id, "." + kind)


def counters_path(cache_id):
    """Read requests counted before the last warm-ups cleared dm-stats: {"hits": n, "misses": n}."""
    return _file(readcache_dir(), cache_id, ".counters")


def load_counters(cache_id):
    doc = _read_json(counters_path(cache_id)) or {}
    return {"hits": int(doc.get("hits") or 0), "misses": int(doc.get("misses") or 0)}


def add_counters(cache_id, hits, misses):
    if not hits and not misses:
        return
    total = load_counters(cache_id)
    write_atomic(counters_path(cache_id), json.dumps(
        {"hits": total["hits"] + hits, "misses": total["misses"] + misses}).encode() + b"\n")


def save_record(rec: ReadCacheRecord):
    write_atomic(record_path(rec.id), rec.to_json())


def load_record(cache_id) -> Optional[ReadCacheRecord]:
    doc = _read_json(record_path(cache_id))
    return ReadCacheRecord.from_dict(doc) if doc is not None else None


def list_records() -> List[ReadCacheRecord]:
    try:
        names = sorted(os.listdir(readcache_dir()))
    except FileNotFoundError:
        return []
    return [r for r in (load_record(n[:-5]) for n in names
                        if n.endswith(".json") and _FILE_RE.match(n[:-5])) if r is not None]


def delete_record(cache_id):
    """The bitmap first: a record without its bitmap means "nothing copied" (safe), the other
    way round a bitmap could outlive its LVs and be read against new ones."""
    _remove(bitmap_path(cache_id))
    _remove(bitmap_path(cache_id, "pending"))
    _remove(counters_path(cache_id))
    return _remove(record_path(cache_id))


def load_bitmap(cache_id, nbits, kind="bitmap") -> bytearray:
    size = -(-int(nbits) // 8)
    try:
        with open(bitmap_path(cache_id, kind), "rb") as f:
            data = bytearray(f.read())
    except FileNotFoundError:
        return bytearray(size)
    if len(data) != size:
        # Made for another size of base: it says nothing about these LVs.
        return bytearray(size)
    return data


def save_bitmap(cache_id, bits: bytearray, kind="bitmap"):
    if kind == "pending" and not any(bits):
        _remove(bitmap_path(cache_id, kind))
        return
    write_atomic(bitmap_path(cache_id, kind), bytes(bits))


def refs(cache_id, stacks=None):
    """How many stacks use the read cache (counted from the stack files)."""
    return sum(1 for st in (list_stacks() if stacks is None else stacks)
               if st.read_cache == cache_id)
