"""The seam between the front-end and the node helper, in one place both sides import.

- the cache-mode vocabulary and its rules;
- the guard and ownership tags tm_iscsi keeps on the storage node's LVs;
- the four transactions an action is made of, with their requests as typed records that travel
  as one JSON argument (`--request`) and are checked field by field on the node before anything
  changes:

    storage-attach   storage node: every disk of an action at its wanted storage state (LV made
                     or snapshotted, base and region map, guard tags, exports and ACLs for one
                     host, the saved LIO config written once); returns the LUNs the host needs.
    host-attach      host: log in to every LUN, check each serial, build the cache stacks, link.
    host-detach      host: tear the stacks down (flush or drop), log out, unlink; says which
                     image bases the host's read caches no longer use.
    storage-release  storage node: revoke the host's ACLs (or every ACL of a host that is gone),
                     clear guards, remove what the VM owned.

An action whose disks are in several datastores of one node sends one request per datastore in
the same call (`--request` repeated; all are checked before the first runs; the answer is
{"results": [...]}, one per request). host-attach --unpack-dir PATH also unpacks the VM directory
(a tar after the secrets on stdin) before the disks: a live migration's destination.

Secrets never travel in a request: a CHAP secret is a line of the call's stdin, one per request
that names a CHAP user, in the requests' order. Standard library only (the node helper imports
this module too)."""
import ipaddress
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Dict, List, Optional

# -- cache modes ---------------------------------------------------------------------------------

MODES = ("none", "read", "writeback", "read+writeback")


def has_read(mode):
    return mode in ("read", "read+writeback")


def has_writeback(mode):
    return mode in ("writeback", "read+writeback")


def without_read(mode):
    return "writeback" if has_writeback(mode) else "none"


def effective(mode, volume_kind):
    """The layers a volume of `volume_kind` can have in `mode`: the read cache is of an image
    shared by many VMs, so only clones of an image get it."""
    if volume_kind == "clone":
        return mode
    if volume_kind in ("volatile", "image"):
        return "writeback" if has_writeback(mode) else "none"
    return "none"


# -- filesystems a new volume can be made with (raw: left blank) ---------------------------------

FILESYSTEMS = ("ext4", "ext3", "ext2", "xfs", "swap", "raw")


def checked_fs(value, what):
    """FS as the VM disk or image gives it -> the filesystem; ValueError names what to set."""
    fs = (value or "raw").strip().lower()
    if fs not in FILESYSTEMS:
        raise ValueError(f"{what} FS={str(value)[:40]!r} is not one of {', '.join(FILESYSTEMS)}")
    return fs


# -- iSCSI names and portals --------------------------------------------------------------------

DEFAULT_PORT = 3260
# RFC 3720 names: iqn.YYYY-MM.reversed.domain[:anything], eui.<16 hex>, naa.<16|32 hex>.
# Only characters that can never mean anything to a shell.
_IQN_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[a-z0-9.:-]+)?"
                     r"|eui\.[0-9a-f]{16}|naa\.(?:[0-9a-f]{16}|[0-9a-f]{32}))$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
# A target IQN is <base>:<vg>.<lv>: the base leaves room for both within RFC 3720's 223 bytes.
IQN_BASE_MAX = 96


def valid_iqn(name):
    return len(str(name)) <= 223 and bool(_IQN_RE.match(str(name)))


def valid_iqn_base(name):
    """A prefix of target IQNs: an iqn. name without its ':' part."""
    name = str(name)
    return name.startswith("iqn.") and ":" not in name and len(name) <= IQN_BASE_MAX and \
        valid_iqn(name)


def parse_portal(text):
    """'host', 'host:port', '1.2.3.4:3260' or '[v6]:port' -> (host, port). ValueError if bad."""
    text = str(text).strip()
    host, port = text, DEFAULT_PORT
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?$", text)
    if m:
        host, port = m.group(1), int(m.group(2) or DEFAULT_PORT)
        ipaddress.IPv6Address(host)
    else:
        if text.count(":") == 1:
            host, port_text = text.split(":")
            if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
                raise ValueError(f"portal {text[:80]!r}: port must be a number")
            port = int(port_text)
        if not _HOSTNAME_RE.match(host):
            raise ValueError(f"portal {text[:80]!r} is not HOST[:PORT]")
    if not 0 < port < 65536:
        raise ValueError(f"portal {text[:80]!r}: port {port} is out of range")
    return host, port


# -- tags on the storage node's LVs -------------------------------------------------------------

OWNER_TAG = "tm_iscsi"
# A host holds unflushed write-back data of the LV: no other host may attach it.
WB_HOST_TAG = "tm_iscsi.wb-host="
# Set on a disk each time a lost host's write-back data of it is declared void (host-lost): a
# host whose write-back cache of the disk is of another epoch drops it, never writes it back.
WB_EPOCH_TAG = "tm_iscsi.wb-epoch="
# The base generation a clone's region map was made against (on the clone, its map, the base).
BASE_GEN_TAG = "tm_iscsi.base="
# The image was written (attached persistent, reverted): its base serves no new clone.
RETIRED_TAG = "tm_iscsi.retired=yes"
# The clone is written by a path that does not update its map (live migration in progress).
STALE_MAP_TAG = "tm_iscsi.map=stale"


# A clone kept as an image at terminate (TM_ISCSI_SYNC): registering, then the image's id.
SYNC_PENDING_TAG = "tm_iscsi.sync=pending"
SYNC_IMAGE_TAG = "tm_iscsi.image-of-sync="
# The owner tags: what made the LV and for whom (owner_tags()).
OWNER_KEYS = ("kind", "vm", "disk", "image", "ds")
# What a VM disk's volume is (the kind a request may ask the node to make).
VOLUME_KINDS = ("clone", "volatile", "image")


def owner_tag(key, value):
    return f"{OWNER_TAG}.{key}={value}"


def tag_value(tags, prefix):
    for tag in tags or ():
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return None


def owner_tags(**owner):
    """lv_tags(kind="clone", vm=42, disk=0, image=7, ds=100) -> ["tm_iscsi",
    "tm_iscsi.disk=0", ...]. LVM allows [A-Za-z0-9_+.-/=!:&#] in tags."""
    tags = [OWNER_TAG]
    for key, value in sorted(owner.items()):
        if value is not None:
            tags.append(owner_tag(key, value))
    return tags


def base_lv(image_lv):
    """The image's read-cache base: a thin snapshot of it, exported to hosts, never written."""
    return f"{image_lv}-base"


def map_lv(lv):
    """A clone's region map (dm-clone metadata), kept next to the clone."""
    return f"{lv}-map"


def base_key(vg, image_lv, gen):
    """What names one version of an image's base on every host (its read cache's identity)."""
    return f"{vg}.{base_lv(image_lv)}.{gen}"


def base_key_prefix(vg, image_lv):
    return f"{vg}.{base_lv(image_lv)}."


IMAGE_PATH_MAX = 4096


def image_path(path):
    """An absolute path inside an image's filesystem (image extract / overlay), normalized:
    printable, no '..'. ValueError otherwise."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > IMAGE_PATH_MAX:
        raise ValueError(f"{str(path)[:80]!r}: give an absolute path inside the image (/etc, "
                         "/var/www)")
    if not path.isprintable():
        raise ValueError(f"{path[:80]!r}: the path holds control characters")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path[:80]}: '..' is not allowed in a path inside the image")
    return "/" + "/".join(parts)


_BASE_KEY_IMAGE = re.compile(r"\.img-(\d{1,12})-base\.")


def image_id_of_base_key(key):
    """The oned image id a read cache's key names (None: not an image's base)."""
    found = _BASE_KEY_IMAGE.search(str(key or ""))
    return int(found.group(1)) if found else None


# -- commands -----------------------------------------------------------------------------------

STORAGE_ATTACH = "storage-attach"
STORAGE_RELEASE = "storage-release"
HOST_ATTACH = "host-attach"
HOST_DETACH = "host-detach"
TRANSACTIONS = (STORAGE_ATTACH, STORAGE_RELEASE, HOST_ATTACH, HOST_DETACH)

LUN_ROLES = ("clone", "base", "map")
MAX_DISKS = 64
MAP_ACTIONS = ("keep", "stale", "fresh", "forget")


class ProtocolError(ValueError):
    """A request that is not what the protocol says; the message names the field."""


def _check_type(where, name, value, kind, optional):
    if value is None:
        if optional:
            return
        raise ProtocolError(f"{where}: {name} is required")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 53
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ProtocolError(f"{where}: {name} must be {kind.__name__}, not {value!r:.60}")
    if kind is str and (len(value) > 4096 or "\0" in value or "\n" in value):
        raise ProtocolError(f"{where}: {name} is too long or holds a NUL or newline")


class _Record:
    """A dataclass that travels as JSON: unknown keys and wrong types are refused."""
    _TYPES: Dict[str, tuple] = {}
    _NESTED: Dict[str, type] = {}

    @classmethod
    def from_dict(cls, doc, where=None):
        where = where or cls.__name__
        if not isinstance(doc, dict):
            raise ProtocolError(f"{where} must be an object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise ProtocolError(f"{where}: unknown field {unknown[0]!r}")
        values = {}
        for name in names:
            value = doc.get(name)
            if name in cls._NESTED:
                nested = cls._NESTED[name]
                if name in cls._TYPES and cls._TYPES[name][0] is list:
                    if not isinstance(value or [], list) or len(value or []) > MAX_DISKS:
                        raise ProtocolError(f"{where}: {name} must be a list of at most "
                                            f"{MAX_DISKS}")
                    value = [nested.from_dict(v, f"{where}.{name}[{i}]")
                             for i, v in enumerate(value or [])]
                elif name in cls._TYPES and cls._TYPES[name][0] is dict:
                    if not isinstance(value or {}, dict):
                        raise ProtocolError(f"{where}: {name} must be an object")
                    for role in (value or {}):
                        if role not in LUN_ROLES:
                            raise ProtocolError(f"{where}: {name}: unknown LUN role {role!r}")
                    value = {k: nested.from_dict(v, f"{where}.{name}.{k}")
                             for k, v in (value or {}).items()}
                elif value is not None:
                    value = nested.from_dict(value, f"{where}.{name}")
            else:
                kind, optional = cls._TYPES[name]
                if value is None:
                    spec = next(f for f in fields(cls) if f.name == name)
                    if spec.default is not MISSING:
                        value = spec.default
                    elif spec.default_factory is not MISSING:
                        value = spec.default_factory()
                _check_type(where, name, value, kind, optional)
            values[name] = value
        record = cls(**values)
        record.check(where)
        return record

    def check(self, where):
        pass

    def to_dict(self):
        return _strip(asdict(self))


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def encode(record):
    return json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":"))


def decode(cls, text):
    if not isinstance(text, str) or len(text) > 256 * 1024:
        raise ProtocolError(f"{cls.__name__}: the request is not a JSON text of at most 256 KiB")
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ProtocolError(f"{cls.__name__}: the request is not JSON: {err}")
    except RecursionError:
        raise ProtocolError(f"{cls.__name__}: the request nests deeper than any request does")
    return cls.from_dict(doc)


# -- storage-attach -----------------------------------------------------------------------------

@dataclass
class StorageDisk(_Record):
    lv: str
    mode: str = "none"                 # the cache mode wanted on the host
    readonly: bool = False
    # When the LV is missing: {"owner": {tag: value}, "origin": LV to snapshot, or "size_mib"
    # of a new thin LV, "fs" to make on it}.
    create: Optional[dict] = None
    image_lv: Optional[str] = None     # the image a clone's read layer caches
    retire_base: bool = False          # the image itself is about to be written
    wb_host: Optional[str] = None      # set the write-back guard to this host (refuses others)
    wb_from: Optional[str] = None      # ... taking it over from this one (flushed: migration)
    map: str = "keep"                  # keep | stale | fresh | forget (migrations, resize)
    export: bool = True                # export the disk's LUNs to the request's initiator

    _TYPES = {"lv": (str, False), "mode": (str, False), "readonly": (bool, False),
              "create": (dict, True), "image_lv": (str, True), "retire_base": (bool, False),
              "wb_host": (str, True), "wb_from": (str, True), "map": (str, False),
              "export": (bool, False)}

    def check(self, where):
        if self.mode not in MODES:
            raise ProtocolError(f"{where}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.map not in MAP_ACTIONS:
            raise ProtocolError(f"{where}: map {self.map!r} is not one of "
                                f"{', '.join(MAP_ACTIONS)}")
        if has_read(self.mode) and not self.image_lv:
            raise ProtocolError(f"{where}: mode {self.mode} needs image_lv")
        if self.create is not None:
            unknown = sorted(set(self.create) - {"owner", "origin", "size_mib", "fs"})
            if unknown:
                raise ProtocolError(f"{where}.create: unknown field {unknown[0]!r}")
            owner = self.create.get("owner") or {}
            if not isinstance(owner, dict) or not all(
                    isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
                    for k, v in owner.items()):
                raise ProtocolError(f"{where}.create.owner must map names to strings or ints")
            for key, kind in (("origin", str), ("size_mib", int), ("fs", str)):
                _check_type(f"{where}.create", key, self.create.get(key), kind, True)
            if not self.create.get("origin") and not self.create.get("size_mib"):
                raise ProtocolError(f"{where}.create needs origin or size_mib")


@dataclass
class StorageAttach(_Record):
    vg: str
    host: str                          # the host the disks are for (guards name it)
    initiator: Optional[str] = None    # its iSCSI initiator name (exports need it)
    disks: List[StorageDisk] = field(default_factory=list)
    pool: str = "tpool"
    iqn_base: str = "iqn.2026-11.io.tm-iscsi"
    portal_ip: str = "0.0.0.0"
    port: int = 3260
    chap_user: Optional[str] = None
    max_fill: int = 90
    ds_id: Optional[int] = None

    _TYPES = {"vg": (str, False), "host": (str, False), "initiator": (str, True),
              "disks": (list, False), "pool": (str, False), "iqn_base": (str, False),
              "portal_ip": (str, False), "port": (int, False), "chap_user": (str, True),
              "max_fill": (int, False), "ds_id": (int, True)}
    _NESTED = {"disks": StorageDisk}

    def check(self, where):
        if not self.disks:
            raise ProtocolError(f"{where}: disks is empty")
        if any(d.export for d in self.disks) and not self.initiator:
            raise ProtocolError(f"{where}: exporting needs the host's initiator")
        if not 0 <= self.max_fill <= 100 or not 1 <= self.port <= 65535:
            raise ProtocolError(f"{where}: max_fill or port out of range")


@dataclass
class Lun(_Record):
    iqn: str
    serial: str

    _TYPES = {"iqn": (str, False), "serial": (str, False)}


# -- host-attach ----------------------------------------------------------------------------------

@dataclass
class HostDisk(_Record):
    name: str                          # the disk's LV, which names its stack
    mode: str
    luns: Dict[str, Lun] = field(default_factory=dict)
    link: Optional[str] = None
    base_key: Optional[str] = None
    wb_size_mib: Optional[int] = None
    wb_epoch: Optional[str] = None     # the disk's WB_EPOCH_TAG value (None: never recovered)
    size_bytes: Optional[int] = None   # as storage-attach answered: the write-back LVs of a new
    #                                    stack are made while the host logs in to the LUNs

    _TYPES = {"name": (str, False), "mode": (str, False), "luns": (dict, False),
              "link": (str, True), "base_key": (str, True), "wb_size_mib": (int, True),
              "wb_epoch": (str, True), "size_bytes": (int, True)}
    _NESTED = {"luns": Lun}

    def check(self, where):
        if self.mode not in MODES:
            raise ProtocolError(f"{where}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        need = {"clone", "base", "map"} if has_read(self.mode) else {"clone"}
        if set(self.luns) != need:
            raise ProtocolError(f"{where}: mode {self.mode} needs LUNs {', '.join(sorted(need))}")
        if has_read(self.mode) and not self.base_key:
            raise ProtocolError(f"{where}: mode {self.mode} needs base_key")
        if self.wb_epoch is not None:
            _check_token(where, self.wb_epoch)


@dataclass
class HostAttach(_Record):
    portal: str
    disks: List[HostDisk] = field(default_factory=list)
    initiator: Optional[str] = None    # what the storage node exported to; checked first
    chap_user: Optional[str] = None

    _TYPES = {"portal": (str, False), "disks": (list, False), "initiator": (str, True),
              "chap_user": (str, True)}
    _NESTED = {"disks": HostDisk}


# -- host-detach ----------------------------------------------------------------------------------

@dataclass
class HostRelease(_Record):
    name: str
    flush: bool = True                 # write dirty blocks back (False: the disk is deleted)
    luns: Dict[str, Lun] = field(default_factory=dict)   # clone, map (and base when read)
    link: Optional[str] = None
    base_prefix: Optional[str] = None  # base_key_prefix of the image the read layer cached

    _TYPES = {"name": (str, False), "flush": (bool, False), "luns": (dict, False),
              "link": (str, True), "base_prefix": (str, True)}
    _NESTED = {"luns": Lun}

    def check(self, where):
        if "clone" not in self.luns:
            raise ProtocolError(f"{where}: luns needs clone")


@dataclass
class HostDetach(_Record):
    portal: str
    disks: List[HostRelease] = field(default_factory=list)
    remove_dir: Optional[str] = None   # the VM directory goes too, once its disks are released

    _TYPES = {"portal": (str, False), "disks": (list, False), "remove_dir": (str, True)}
    _NESTED = {"disks": HostRelease}


# -- storage-release ------------------------------------------------------------------------------

@dataclass
class StorageRelease(_Record):
    vg: str
    host: str
    disks: List["ReleaseDisk"] = field(default_factory=list)
    initiator: Optional[str] = None    # None: every ACL of the disks' targets goes (host lost)
    iqn_base: str = "iqn.2026-11.io.tm-iscsi"

    _TYPES = {"vg": (str, False), "host": (str, False), "disks": (list, False),
              "initiator": (str, True), "iqn_base": (str, False)}


@dataclass
class ReleaseDisk(_Record):
    lv: str
    unexport: bool = True              # the host's ACLs of the disk (and its map) go
    remove: bool = False               # the LV, its snapshots and its map go (the VM's own)
    wb_clear: bool = False             # the write-back guard goes, if it names the host
    wb_host: Optional[str] = None      # ... or is set to this host (a failed migration)
    map: str = "keep"                  # keep | stale | fresh | forget
    release_base_of: Optional[str] = None   # image whose base the host no longer uses
    # Kept as a new image (TM_ISCSI_SYNC): marked SYNC_PENDING_TAG unless it is registered
    # already, and answered with "exists", "size_bytes" and "tags" (what the registration needs).
    keep: bool = False

    _TYPES = {"lv": (str, False), "unexport": (bool, False), "remove": (bool, False),
              "wb_clear": (bool, False), "wb_host": (str, True), "map": (str, False),
              "release_base_of": (str, True), "keep": (bool, False)}

    def check(self, where):
        if self.map not in MAP_ACTIONS:
            raise ProtocolError(f"{where}: map {self.map!r} is not one of "
                                f"{', '.join(MAP_ACTIONS)}")
        if self.keep and self.remove:
            raise ProtocolError(f"{where}: {self.lv} cannot be both kept and removed")


StorageRelease._NESTED = {"disks": ReleaseDisk}


# -- backups ------------------------------------------------------------------------------------
#
# A backup of a VM's disks is four calls, whatever the number of disks:
#
#   backup-quiesce   host: write the write-back layers' dirty blocks to the storage node and keep
#                    them clean (writes go through), then freeze the guest (FS_FREEZE).
#   backup-snapshot  storage node: each disk's point (`<lv>-backup-<N>`, a thin snapshot), the
#                    blocks changed since the previous point (thin_delta on a metadata snapshot
#                    of the pool), the point exported read-only to the host.
#   backup-write     host: thaw, back to write-back, then each point read over iSCSI into
#                    `disk.<id>.<N>` (qcow2, only the changed blocks for an increment) and
#                    `vm.xml`, in the VM's backup directory; logged out after.
#   backup-release   storage node: the points unexported; those the chain no longer needs go.
#
# The changed ranges and the VM document travel on backup-write's stdin (after any CHAP secret
# line) as one JSON object {"vm_xml": base64 text, "ranges": {"<disk id>": [[offset, length]]}}:
# an increment of a large disk has more ranges than argv holds.

BACKUP_QUIESCE = "backup-quiesce"
BACKUP_SNAPSHOT = "backup-snapshot"
BACKUP_WRITE = "backup-write"
BACKUP_RELEASE = "backup-release"
BACKUP_COMMANDS = (BACKUP_QUIESCE, BACKUP_SNAPSHOT, BACKUP_WRITE, BACKUP_RELEASE)
# BACKUP_CONFIG/FS_FREEZE as oned 7.4 reads it (src/tm_mad/lib/kvm.rb): nothing, the guest
# agent's fsfreeze, or the whole domain paused.
FREEZE_MODES = ("NONE", "AGENT", "SUSPEND")
# The most changed ranges one disk's increment may list (a 2 TiB disk changed in every other
# 64 KiB block); the payload's size bound follows from it.
MAX_RANGES = 1 << 24
MAX_PAYLOAD_BYTES = 1 << 30
MAX_INCREMENT = (1 << 31) - 1


def _check_ints(where, name, values, low=0, high=MAX_INCREMENT):
    if not isinstance(values, list) or len(values) > MAX_DISKS or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values):
        raise ProtocolError(f"{where}: {name} must be a list of integers {low}..{high}")


def _check_strs(where, name, values):
    if not isinstance(values, list) or len(values) > MAX_DISKS or not all(
            isinstance(v, str) and 0 < len(v) <= 255 for v in values):
        raise ProtocolError(f"{where}: {name} must be a list of names")


def _check_freeze(where, freeze, domain):
    if freeze not in FREEZE_MODES:
        raise ProtocolError(f"{where}: freeze {freeze!r} is not one of {', '.join(FREEZE_MODES)}")
    if freeze != "NONE" and not domain:
        raise ProtocolError(f"{where}: freeze {freeze} needs the domain")


@dataclass
class BackupQuiesce(_Record):
    stacks: List[str] = field(default_factory=list)   # write-back stacks to flush
    domain: Optional[str] = None                        # the libvirt domain (deploy id)
    freeze: str = "NONE"
    flush_seconds: int = 600

    _TYPES = {"stacks": (list, False), "domain": (str, True), "freeze": (str, False),
              "flush_seconds": (int, False)}

    def check(self, where):
        _check_strs(where, "stacks", self.stacks)
        _check_freeze(where, self.freeze, self.domain)
        if not self.stacks and self.freeze == "NONE":
            raise ProtocolError(f"{where}: nothing to quiesce (no stack, no freeze)")
        if not 1 <= self.flush_seconds <= 86400:
            raise ProtocolError(f"{where}: flush_seconds out of range")


@dataclass
class BackupPoint(_Record):
    lv: str
    increment: int                     # this backup's point is <lv>-backup-<increment>
    since: Optional[int] = None        # the previous point: list the blocks changed since it

    _TYPES = {"lv": (str, False), "increment": (int, False), "since": (int, True)}

    def check(self, where):
        _check_ints(where, "increment", [self.increment])
        if self.since is not None:
            _check_ints(where, "since", [self.since])
            if self.since == self.increment:
                raise ProtocolError(f"{where}: since is the point itself")


@dataclass
class BackupSnapshot(_Record):
    vg: str
    host: str
    initiator: str
    disks: List[BackupPoint] = field(default_factory=list)
    pool: str = "tpool"
    iqn_base: str = "iqn.2026-11.io.tm-iscsi"
    portal_ip: str = "0.0.0.0"
    port: int = 3260
    chap_user: Optional[str] = None
    max_fill: int = 90
    ds_id: Optional[int] = None
    vm_id: Optional[int] = None        # the VM backed up: its points are its own (orphans)

    _TYPES = {"vg": (str, False), "host": (str, False), "initiator": (str, False),
              "disks": (list, False), "pool": (str, False), "iqn_base": (str, False),
              "portal_ip": (str, False), "port": (int, False), "chap_user": (str, True),
              "max_fill": (int, False), "ds_id": (int, True), "vm_id": (int, True)}
    _NESTED = {"disks": BackupPoint}

    def check(self, where):
        if not self.disks:
            raise ProtocolError(f"{where}: disks is empty")
        if not 0 <= self.max_fill <= 100 or not 1 <= self.port <= 65535:
            raise ProtocolError(f"{where}: max_fill or port out of range")
        if self.vm_id is not None:
            _check_ints(where, "vm_id", [self.vm_id])


@dataclass
class BackupFile(_Record):
    disk_id: int
    increment: int                     # names the file: disk.<disk_id>.<increment>
    lun: Optional[Lun] = None          # the point's LUN
    size_bytes: int = 0                # the disk's virtual size
    delta: bool = False                # only the ranges of the payload (an increment)
    portal: Optional[str] = None       # the LUN's storage node, when not the request's

    _TYPES = {"disk_id": (int, False), "increment": (int, False), "size_bytes": (int, False),
              "delta": (bool, False), "portal": (str, True)}
    _NESTED = {"lun": Lun}

    def check(self, where):
        _check_ints(where, "disk_id/increment", [self.disk_id, self.increment])
        if self.lun is None:
            raise ProtocolError(f"{where}: lun is required")
        if not 0 < self.size_bytes <= 1 << 56:
            raise ProtocolError(f"{where}: size_bytes out of range")


@dataclass
class BackupWrite(_Record):
    portal: str
    dir: str                           # the VM's backup directory (made anew)
    files: List[BackupFile] = field(default_factory=list)
    resume: List[str] = field(default_factory=list)   # stacks back to write-back first
    domain: Optional[str] = None
    thaw: str = "NONE"                 # the FS_FREEZE backup-quiesce applied
    chap_user: Optional[str] = None

    _TYPES = {"portal": (str, False), "dir": (str, False), "files": (list, False),
              "resume": (list, False), "domain": (str, True), "thaw": (str, False),
              "chap_user": (str, True)}
    _NESTED = {"files": BackupFile}

    def check(self, where):
        _check_strs(where, "resume", self.resume)
        _check_freeze(where, self.thaw, self.domain)
        if len({f.disk_id for f in self.files}) != len(self.files):
            raise ProtocolError(f"{where}: a disk is listed twice")


@dataclass
class BackupKeep(_Record):
    lv: str
    keep: List[int] = field(default_factory=list)     # the points the chain still needs

    _TYPES = {"lv": (str, False), "keep": (list, False)}

    def check(self, where):
        _check_ints(where, "keep", self.keep)


@dataclass
class BackupRelease(_Record):
    vg: str
    host: str
    disks: List[BackupKeep] = field(default_factory=list)
    iqn_base: str = "iqn.2026-11.io.tm-iscsi"
    initiator: Optional[str] = None

    _TYPES = {"vg": (str, False), "host": (str, False), "disks": (list, False),
              "iqn_base": (str, False), "initiator": (str, True)}
    _NESTED = {"disks": BackupKeep}


def backup_payload(vm_xml_b64, ranges):
    return json.dumps({"vm_xml": vm_xml_b64,
                       "ranges": {str(k): v for k, v in sorted(ranges.items())}},
                      separators=(",", ":")).encode()


def parse_backup_payload(data):
    """(vm_xml base64 text, {disk id: [(offset, length)]}); ProtocolError if malformed."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("backup payload: larger than any backup's")
    try:
        doc = json.loads(data.decode("ascii"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ProtocolError(f"backup payload: not JSON ({str(err)[:80]})")
    if not isinstance(doc, dict) or set(doc) != {"vm_xml", "ranges"}:
        raise ProtocolError("backup payload: needs exactly vm_xml and ranges")
    vm_xml, ranges = doc["vm_xml"], doc["ranges"]
    if not isinstance(vm_xml, str) or not re.fullmatch(r"[A-Za-z0-9+/=\s]*", vm_xml):
        raise ProtocolError("backup payload: vm_xml is not base64")
    if not isinstance(ranges, dict):
        raise ProtocolError("backup payload: ranges must map disk ids to lists")
    out = {}
    for key, value in ranges.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise ProtocolError(f"backup payload: {key[:20]!r} is not a disk id")
        if not isinstance(value, list) or len(value) > MAX_RANGES:
            raise ProtocolError(f"backup payload: ranges of disk {key} is not a list")
        pairs = []
        for item in value:
            if not (isinstance(item, list) and len(item) == 2 and all(
                    isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 56
                    for n in item) and item[1] > 0):
                raise ProtocolError(f"backup payload: a range of disk {key} is not "
                                    "[offset, length]")
            pairs.append((item[0], item[1]))
        out[int(key)] = pairs
    return vm_xml, out


# -- write-back checkpoints -----------------------------------------------------------------------
#
# A checkpoint of a VM's write-back disks is a thin snapshot of each clone that holds every write
# the VM saw completed before one instant and none after: what a crash at that instant would
# leave on a disk without a host cache. Four calls, whatever the number of disks:
#
#   checkpoint-drain   host: the write-back layers written back and kept clean while the VM
#                      runs (writes go through to the clone); with `hold` (a VM with several
#                      write-back disks) the disks' top devices are then suspended, I/O queued,
#                      so that one instant cuts them all.
#   checkpoint-take    storage node: `<lv>-ckpt-next`, a thin snapshot of each clone. With the
#                      layers clean, every completed write is on the clone: the instant LVM
#                      suspends the clone to snapshot it is the checkpoint (or the host's hold).
#   checkpoint-resume  host: top devices resumed, write-back again; says whether every stack
#                      stayed clean (and held) from the drain to now, which is what makes the
#                      snapshot a checkpoint.
#   checkpoint-commit  storage node: a valid snapshot replaces the disk's last checkpoint
#                      (`<lv>-ckpt`) by renames; an invalid one is removed.
#
# `host-lost` (storage node): a host that never comes back: each disk it held write-back data of
# gets its last checkpoint's content (or, when asked, is kept as it is), loses its guard and its
# exports; the answer says how old each disk's data now is.

CHECKPOINT_DRAIN = "checkpoint-drain"
CHECKPOINT_TAKE = "checkpoint-take"
CHECKPOINT_RESUME = "checkpoint-resume"
CHECKPOINT_COMMIT = "checkpoint-commit"
HOST_LOST = "host-lost"
CHECKPOINT_COMMANDS = (CHECKPOINT_DRAIN, CHECKPOINT_TAKE, CHECKPOINT_RESUME, CHECKPOINT_COMMIT,
                       HOST_LOST)
# On a checkpoint: the host whose write-back data it bounds, and when it was taken (epoch s).
CKPT_HOST_TAG = "tm_iscsi.ckpt-host="
CKPT_AT_TAG = "tm_iscsi.ckpt-at="
CHECKPOINT_KIND = "checkpoint"
_TOKEN_RE = re.compile(r"[0-9a-f]{8,64}")
MAX_HOLD_SECONDS = 120


def checkpoint_cut_at(tags):
    """When a checkpoint was cut (epoch seconds, from its CKPT_AT_TAG), or None."""
    value = tag_value(tags, CKPT_AT_TAG)
    return int(value) if value and value.isascii() and value.isdigit() else None


def _check_token(where, token):
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise ProtocolError(f"{where}: token must be 8-64 lower-case hex digits")


@dataclass
class CheckpointDrain(_Record):
    stacks: List[str]
    token: str                         # names this checkpoint on the stacks until its resume
    hold: bool = False                 # suspend the top devices once all are clean
    hold_seconds: int = 30             # a hold nobody ends is ended by the next host command
    flush_seconds: int = 600

    _TYPES = {"stacks": (list, False), "token": (str, False), "hold": (bool, False),
              "hold_seconds": (int, False), "flush_seconds": (int, False)}

    def check(self, where):
        _check_strs(where, "stacks", self.stacks)
        _check_token(where, self.token)
        if not self.stacks:
            raise ProtocolError(f"{where}: stacks is empty")
        if not 1 <= self.hold_seconds <= MAX_HOLD_SECONDS or not 1 <= self.flush_seconds <= 86400:
            raise ProtocolError(f"{where}: hold_seconds or flush_seconds out of range")


@dataclass
class CheckpointResume(_Record):
    stacks: List[str]
    token: str

    _TYPES = {"stacks": (list, False), "token": (str, False)}

    def check(self, where):
        _check_strs(where, "stacks", self.stacks)
        _check_token(where, self.token)


@dataclass
class CheckpointTake(_Record):
    vg: str
    host: str                          # the host whose write-back data the checkpoint bounds
    lvs: List[str] = field(default_factory=list)
    max_fill: int = 90

    _TYPES = {"vg": (str, False), "host": (str, False), "lvs": (list, False),
              "max_fill": (int, False)}

    def check(self, where):
        _check_strs(where, "lvs", self.lvs)
        if not self.lvs or len(set(self.lvs)) != len(self.lvs):
            raise ProtocolError(f"{where}: lvs must list each disk once")
        if not 0 <= self.max_fill <= 100:
            raise ProtocolError(f"{where}: max_fill out of range")


@dataclass
class CheckpointCommit(_Record):
    vg: str
    host: str
    lvs: List[str] = field(default_factory=list)
    valid: bool = True                 # False: the snapshots are no checkpoint; removed

    _TYPES = {"vg": (str, False), "host": (str, False), "lvs": (list, False),
              "valid": (bool, False)}

    def check(self, where):
        _check_strs(where, "lvs", self.lvs)


@dataclass
class HostLost(_Record):
    vg: str
    host: str                          # the lost host: the disks whose guard names it
    # The IQN bases the VG's datastores export under: a disk's targets go under each.
    iqn_bases: List[str] = field(default_factory=lambda: ["iqn.2026-11.io.tm-iscsi"])
    without_checkpoint: bool = False   # a guarded disk with no checkpoint is kept as it is
    max_fill: int = 90

    _TYPES = {"vg": (str, False), "host": (str, False), "iqn_bases": (list, False),
              "without_checkpoint": (bool, False), "max_fill": (int, False)}

    def check(self, where):
        _check_strs(where, "iqn_bases", self.iqn_bases)
        if not self.iqn_bases:
            raise ProtocolError(f"{where}: iqn_bases is empty")
        if not 0 <= self.max_fill <= 100:
            raise ProtocolError(f"{where}: max_fill out of range")
