"""Everything the node helper knows about the iSCSI initiator: iscsiadm's syntax and exit codes,
the iSCSI sysfs layout, and the SCSI disks a session brings.

The kernel is asked through sysfs, not `iscsiadm -m session -P3`: it is faster, does not depend on
the text layout of one open-iscsi version, and tells which SCSI disk belongs to which session and
LUN without a guess.
"""
import glob
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

from ..protocol import DEFAULT_PORT, parse_portal, valid_iqn  # noqa: F401 - one vocabulary
from . import locks
from . import run as _run
from .errors import NodeError

INITIATOR_FILE = os.environ.get("TM_ISCSI_INITIATOR_FILE", "/etc/iscsi/initiatorname.iscsi")
SYSFS = os.environ.get("TM_ISCSI_SYSFS", "/sys")
BY_PATH_DIR = "/dev/disk/by-path"

# iscsiadm exit codes (open-iscsi's include/iscsi_err.h) the helper treats specially.
ERR_SESS_EXISTS = 15
ERR_NO_OBJS_FOUND = 21
ERR_LOGIN_AUTH_FAILED = 24
ERR_TRANS_TIMEOUT = 8

_HCTL_RE = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")


def resolve(host):
    """The IP address of the storage node: the node record, the session and udev's by-path name
    all use the address, so a name must become the same address every time."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    import socket   # only for a portal given by name, not by address
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise NodeError(f"cannot resolve the storage node {host!r}: {err.strerror}; check DNS or "
                        "/etc/hosts on this host")
    addresses = [info[4][0] for info in infos]
    ipv4 = [a for a in addresses if ":" not in a]
    return (ipv4 or addresses)[0]


def portal_arg(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def initiator_name(path=None):
    path = path or INITIATOR_FILE
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("InitiatorName="):
                    return line.split("=", 1)[1].strip()
    except OSError as err:
        raise NodeError(f"cannot read {path}: {err.strerror}; install open-iscsi and set this "
                        "host's initiator name there")
    raise NodeError(f"{path} has no InitiatorName= line; set this host's initiator name there")


# -- sysfs -----------------------------------------------------------------------------------

def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


@dataclass
class Disk:
    lun: int
    name: str  # "sdb"
    hctl: str

    @property
    def device(self):
        return f"/dev/{self.name}"


@dataclass
class Session:
    sid: int
    iqn: str
    ip: Optional[str]
    port: Optional[int]
    state: Optional[str]
    disks: List[Disk] = field(default_factory=list)

    def disk(self, lun):
        for disk in self.disks:
            if disk.lun == lun:
                return disk
        return None

    @property
    def portal(self):
        return portal_arg(self.ip, self.port) if self.ip else None


def sessions(sysfs=None):
    """The iSCSI sessions the kernel has, with the SCSI disks of each."""
    sysfs = sysfs or SYSFS
    base = os.path.join(sysfs, "class", "iscsi_session")
    result = []
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return result
    for entry in entries:
        m = re.match(r"^session(\d+)$", entry)
        if not m:
            continue
        sdir = os.path.join(base, entry)
        iqn = _read(os.path.join(sdir, "targetname"))
        if not iqn:
            continue
        # .../platform/hostH/sessionN: connections and SCSI targets hang below it.
        devdir = os.path.realpath(os.path.join(sdir, "device"))
        ip = port = None
        for conn in sorted(glob.glob(os.path.join(devdir, "connection*", "iscsi_connection",
                                                  "connection*"))):
            ip = _read(os.path.join(conn, "persistent_address")) or _read(
                os.path.join(conn, "address"))
            port_text = _read(os.path.join(conn, "persistent_port")) or _read(
                os.path.join(conn, "port"))
            port = int(port_text) if port_text and port_text.isdigit() else None
            if ip:
                break
        disks = []
        for sdev in sorted(glob.glob(os.path.join(devdir, "target*", "*:*:*:*"))):
            hm = _HCTL_RE.match(os.path.basename(sdev))
            if not hm:
                continue
            for blk in sorted(glob.glob(os.path.join(sdev, "block", "*"))):
                disks.append(Disk(int(hm.group(4)), os.path.basename(blk),
                                  os.path.basename(sdev)))
        result.append(Session(int(m.group(1)), iqn, ip, port, _read(os.path.join(sdir, "state")),
                              disks))
    return result


def sessions_of(iqn, sysfs=None):
    return [s for s in sessions(sysfs) if s.iqn == iqn]


def parse_vpd_pg80(data):
    """Unit serial from a raw VPD page 0x80 (4-byte header, then the serial, maybe padded)."""
    if len(data) < 4 or data[1] != 0x80:
        return None
    length = (data[2] << 8) | data[3]
    return data[4:4 + length].rstrip(b"\0 ").decode("ascii", errors="replace").strip()


def unit_serial(disk_name, sysfs=None):
    path = os.path.join(sysfs or SYSFS, "block", disk_name, "device", "vpd_pg80")
    try:
        with open(path, "rb") as f:
            return parse_vpd_pg80(f.read())
    except OSError:
        return None


def _write_sysfs(path, value, what):
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as err:
        raise NodeError(f"{what}: cannot write {path}: {err.strerror}")


def rescan_disk(disk_name, sysfs=None):
    """Re-read a disk's size and VPD pages (the serial is cached from its first probe)."""
    _write_sysfs(os.path.join(sysfs or SYSFS, "block", disk_name, "device", "rescan"), "1",
                 f"rescanning /dev/{disk_name}")


def delete_disk(disk_name, sysfs=None):
    path = os.path.join(sysfs or SYSFS, "block", disk_name, "device", "delete")
    if os.path.exists(path):
        _write_sysfs(path, "1", f"deleting /dev/{disk_name}")


def holders(disk_name, sysfs=None):
    """dm devices (caches, clones) stacked on the disk: it must not vanish under them."""
    base = os.path.join(sysfs or SYSFS, "block", disk_name, "holders")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    result = []
    for name in names:
        dm_name = _read(os.path.join(sysfs or SYSFS, "block", name, "dm", "name"))
        result.append(f"{name} ({dm_name})" if dm_name else name)
    return result


def mounted(device, mounts_file="/proc/mounts"):
    try:
        with open(mounts_file) as f:
            return any(line.split()[0] == device for line in f if line.strip())
    except OSError:
        return False


def by_path(ip, port, iqn, lun):
    """udev's name for the LUN (60-persistent-storage.rules), stable across re-logins."""
    return os.path.join(BY_PATH_DIR, f"ip-{ip}:{port}-iscsi-{iqn}-lun-{lun}")


def by_path_prefix(iqn):
    return f"-iscsi-{iqn}-lun-"


def flush(device):
    _run.run(["blockdev", "--flushbufs", device], timeout=120, what=f"flushing {device}")


# -- iscsiadm ----------------------------------------------------------------------------------

def _node_argv(iqn, ip, port):
    return ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal_arg(ip, port)]


def record_settings(chap=None, login_timeout=15, login_attempts=2):
    """name -> value for the node record: never logged in by iscsid on its own at boot (the
    driver decides which LUNs a host holds), bounded login, CHAP or explicitly none."""
    settings = [
        ("node.startup", "manual"),
        ("node.conn[0].startup", "manual"),
        ("node.conn[0].timeo.login_timeout", str(int(login_timeout))),
        ("node.session.initial_login_retry_max", str(int(login_attempts))),
    ]
    if chap:
        # The secret itself is written into the record file, not passed in iscsiadm's argv
        # (write_record): here only a placeholder the file write replaces.
        settings += [("node.session.auth.authmethod", "CHAP"),
                     ("node.session.auth.username", chap[0]),
                     ("node.session.auth.password", SECRET_PLACEHOLDER)]
    else:
        settings += [("node.session.auth.authmethod", "None")]
    return settings


def create_record_argv(iqn, ip, port):
    return _node_argv(iqn, ip, port) + ["-o", "new"]


def update_record_argv(iqn, ip, port, settings):
    argv = _node_argv(iqn, ip, port) + ["-o", "update"]
    for name, value in settings:
        argv += ["-n", name, "-v", value]
    return argv


SECRET_PLACEHOLDER = "tm-iscsi-secret-pending"
NODES_DIR = os.environ.get("TM_ISCSI_ISCSI_NODES", "/etc/iscsi/nodes")
_PASSWORD_KEY = "node.session.auth.password"


def record_files(iqn, ip, port):
    """The files iscsiadm keeps the record in: <nodes>/<iqn>/<ip>,<port>[,<tpgt>] as a file, or
    as a directory holding `default`."""
    base = os.path.join(NODES_DIR, iqn, f"{ip},{port}")
    found = []
    # "<ip>,<port>" when made with -o new (no portal group yet), "<ip>,<port>,<tpgt>" after.
    for path in sorted(glob.glob(glob.escape(base)) + glob.glob(glob.escape(base) + ",*")):
        found.append(os.path.join(path, "default") if os.path.isdir(path) else path)
    return [f for f in found if os.path.isfile(f)]


def set_record_secret(path, secret):
    """Put the CHAP secret into one record file, in the `name = value` line iscsiadm writes,
    replacing the placeholder; atomically, root's alone (0600, as iscsiadm keeps it)."""
    with open(path) as f:
        lines = f.read().splitlines()
    out, done = [], False
    for line in lines:
        if line.split("=", 1)[0].strip() == _PASSWORD_KEY:
            line, done = f"{_PASSWORD_KEY} = {secret}", True
        out.append(line)
    if not done:
        raise NodeError(f"{path} has no {_PASSWORD_KEY} line after iscsiadm set it: not the "
                        "record format tm_iscsi knows")
    tmp = f"{path}.tm_iscsi-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(out) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _db_locked(func):
    """iscsiadm keeps one node database for every target and gives up ("iSCSI database
    failure", exit 6) when another iscsiadm holds it too long: every call that reads or writes
    it runs under one host-wide lock instead."""
    import functools

    @functools.wraps(func)
    def locked(*args, **kwargs):
        with locks.lock("iscsiadm", "db"):
            return func(*args, **kwargs)
    return locked


@_db_locked
def write_record(iqn, ip, port, chap=None, login_timeout=15, login_attempts=2):
    """Create (or keep) the node record and set it; no SendTargets discovery, which would record
    every target the portal shows, not just this one. A CHAP secret goes into the record file
    directly: in iscsiadm's argv it could be read by any local user for the call's length."""
    _run.run(create_record_argv(iqn, ip, port), timeout=30,
             what=f"creating the iSCSI node record of {iqn}")
    _run.run(update_record_argv(iqn, ip, port,
                                record_settings(chap, login_timeout, login_attempts)),
             timeout=30, what=f"setting the iSCSI node record of {iqn}")
    if chap:
        files = record_files(iqn, ip, port)
        if not files:
            raise NodeError(f"iscsiadm made no record file of {iqn} under {NODES_DIR}; cannot "
                            "set its CHAP secret")
        for path in files:
            set_record_secret(path, chap[1])


def login_argv(iqn, ip, port):
    return _node_argv(iqn, ip, port) + ["--login"]


@_db_locked
def login(iqn, ip, port, timeout, initiator=None):
    result = _run.run(login_argv(iqn, ip, port), timeout=timeout, check=False,
                      what=f"logging in to {iqn}")
    if result.returncode in (0, ERR_SESS_EXISTS):
        return
    portal = portal_arg(ip, port)
    if result.returncode == ERR_LOGIN_AUTH_FAILED:
        raise NodeError(f"storage node {portal} refused the login of {initiator or 'this host'} "
                        f"to {iqn}: authorization failure (the target has no ACL for this "
                        "initiator or the CHAP credentials are wrong; export the LUN to this "
                        "host first)")
    if result.returncode == ERR_TRANS_TIMEOUT:
        raise NodeError(f"login to {iqn} at {portal} timed out: the storage node does not answer "
                        "on the iSCSI port (check the network and that LIO listens there)")
    raise _run.failure(result, f"logging in to {iqn} at {portal}")


def logout_session_argv(sid):
    return ["iscsiadm", "-m", "session", "-r", str(int(sid)), "--logout"]


@_db_locked
def logout_session(sid):
    result = _run.run(logout_session_argv(sid), timeout=60, check=False,
                      what=f"logging out of iSCSI session {sid}")
    if result.returncode not in (0, ERR_NO_OBJS_FOUND):
        raise _run.failure(result, f"logging out of iSCSI session {sid}")


def delete_records_argv(iqn):
    return ["iscsiadm", "-m", "node", "-T", iqn, "-o", "delete"]


@_db_locked
def delete_records(iqn):
    """Every node record of the target, whatever portal it was made with."""
    result = _run.run(delete_records_argv(iqn), timeout=30, check=False,
                      what=f"deleting the iSCSI node records of {iqn}")
    if result.returncode not in (0, ERR_NO_OBJS_FOUND):
        raise _run.failure(result, f"deleting the iSCSI node records of {iqn}")


@_db_locked
def has_record(iqn):
    result = _run.run(["iscsiadm", "-m", "node", "-T", iqn], timeout=30, check=False)
    return result.returncode == 0


def rescan_session(sid):
    _run.run(["iscsiadm", "-m", "session", "-r", str(int(sid)), "--rescan"], timeout=60,
             what=f"rescanning iSCSI session {sid}")
