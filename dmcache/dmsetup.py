"""Everything tm_iscsi knows about `dmsetup`: its syntax, its exit codes and udev handshake.

Every call goes through tm_iscsi.node.run, so it has a timeout: a dm device stuck on a dead iSCSI
path blocks `dmsetup suspend` forever otherwise, and oned would wait with it.

udev: dmsetup waits for udev to process each change (a "cookie"), which is what creates
/dev/mapper/<name>. When udev is slow or absent that wait is the timeout, and the node is then made
by `dmsetup mknodes`, so a caller always gets a usable path or a clear error.
"""
import os
import stat
import time
from dataclasses import dataclass
from typing import Optional

from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError

MAPPER_DIR = "/dev/mapper"
# Create and remove wait for udev; suspend waits for in-flight I/O, which on an iSCSI disk is
# bounded by the session's replacement timeout (120 s by default).
CHANGE_TIMEOUT = 150
QUERY_TIMEOUT = 30
SETTLE_TIMEOUT = 30
UDEV_GRACE = 5
_NOT_FOUND = ("No such device or address", "not found", "does not exist")


def path(name):
    return os.path.join(MAPPER_DIR, name)


def _missing(result):
    return result.returncode != 0 and any(s in result.stderr for s in _NOT_FOUND)


@dataclass
class Info:
    name: str
    open_count: int
    suspended: bool
    live_table: bool
    major: int
    minor: int
    uuid: str
    targets: int

    @property
    def devno(self):
        return f"{self.major}:{self.minor}"


_INFO_FIELDS = "name,open,attr,major,minor,uuid,segments"


def parse_info(text):
    """`dmsetup info -c --noheadings --separator | -o name,open,attr,major,minor,uuid,segments`
    -> Info. attr is e.g. `L--w`: L live table, I inactive table, s suspended, r read-only."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    parts = line.split("|")
    if len(parts) != 7:
        raise NodeError(f"cannot parse `dmsetup info` output: {line!r}")
    name, open_count, attr, major, minor, uuid, segments = parts
    return Info(name=name, open_count=int(open_count), suspended=attr[2:3] == "s",
                live_table=attr.startswith("L"), major=int(major), minor=int(minor),
                uuid=uuid, targets=int(segments or 0))


def info(name) -> Optional[Info]:
    """The device's state, or None when no device of that name exists."""
    result = _run.run(["dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o",
                       _INFO_FIELDS, name], timeout=QUERY_TIMEOUT, check=False)
    if _missing(result):
        return None
    if result.returncode != 0:
        raise _run.failure(result, f"reading dm device {name}")
    return parse_info(result.stdout)


def exists(name):
    return info(name) is not None


def ls(prefix=""):
    """Names of the dm devices, optionally only those starting with prefix."""
    result = _run.run(["dmsetup", "ls"], timeout=QUERY_TIMEOUT, what="listing dm devices")
    return parse_ls(result.stdout, prefix)


def parse_ls(text, prefix=""):
    names = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] == "No":  # "No devices found"
            continue
        if parts[0].startswith(prefix):
            names.append(parts[0])
    return sorted(names)


def status(name):
    """`dmsetup status` text of a device (one line per target), or None if it does not exist."""
    result = _run.run(["dmsetup", "status", name], timeout=QUERY_TIMEOUT, check=False)
    if _missing(result):
        return None
    if result.returncode != 0:
        raise _run.failure(result, f"reading the status of dm device {name}")
    return result.stdout.strip()


def table(name):
    """The live table (devices as major:minor), or None if the device does not exist."""
    result = _run.run(["dmsetup", "table", name], timeout=QUERY_TIMEOUT, check=False)
    if _missing(result):
        return None
    if result.returncode != 0:
        raise _run.failure(result, f"reading the table of dm device {name}")
    return result.stdout.strip()


def _clear_stale_node(name):
    """A regular file at /dev/mapper/<name> (left by a failed `dd of=`) would stop the new
    device from getting its node, and udev sync would wait its full timeout for it."""
    node = path(name)
    try:
        st = os.lstat(node)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        os.unlink(node)


def create_argv(name, table_text):
    return ["dmsetup", "create", name, "--table", table_text]


def create(name, table_text, timeout=CHANGE_TIMEOUT):
    _clear_stale_node(name)
    _run.run(create_argv(name, table_text), timeout=timeout,
             what=f"creating dm device {name}")
    wait_node(name)
    return path(name)


def wait_node(name, timeout=SETTLE_TIMEOUT):
    """/dev/mapper/<name> as a block device; made by mknodes if udev has not made it."""
    node = path(name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if stat.S_ISBLK(os.stat(node).st_mode):
                return node
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            _run.run(["dmsetup", "mknodes", name], timeout=QUERY_TIMEOUT,
                     what=f"making the node of dm device {name}")
            if os.path.exists(node):
                return node
            raise NodeError(f"dm device {name} exists but {node} did not appear; is udev "
                            "running on this host?")
        time.sleep(0.05)


def load_argv(name, table_text):
    return ["dmsetup", "load", name, "--table", table_text]


def reload(name, table_text, timeout=CHANGE_TIMEOUT):
    """Replace the live table: load the inactive one, then suspend (which waits for in-flight
    I/O) and resume, which swaps them."""
    _run.run(load_argv(name, table_text), timeout=QUERY_TIMEOUT,
             what=f"loading a new table into dm device {name}")
    suspend(name, timeout=timeout)
    resume(name, timeout=timeout)


def suspend(name, timeout=CHANGE_TIMEOUT):
    _run.run(["dmsetup", "suspend", name], timeout=timeout,
             what=f"suspending dm device {name}")


def resume(name, timeout=CHANGE_TIMEOUT):
    _run.run(["dmsetup", "resume", name], timeout=timeout, what=f"resuming dm device {name}")


def remove_argv(name):
    # --retry: udev's probes (blkid) briefly open a new device; a remove racing them would fail.
    return ["dmsetup", "remove", "--retry", name]


def settled_info(name, seconds=UDEV_GRACE):
    """info() once udev is done with the device. Closing a device that was open for writing
    makes udev probe it (its inotify watch), so a count of 1 right after our own writes is often
    udev's blkid: that is not a user, waiting for it is enough."""
    dev = info(name)
    if dev is None or not dev.open_count:
        return dev
    settle(timeout=seconds)
    deadline = time.monotonic() + seconds
    while dev is not None and dev.open_count and time.monotonic() < deadline:
        time.sleep(0.1)
        dev = info(name)
    return dev


def remove(name, timeout=CHANGE_TIMEOUT):
    """Remove the device; False if there was none. A device still open stays, with an error
    that says by how many."""
    dev = settled_info(name)
    if dev is None:
        return False
    if dev.open_count:
        raise NodeError(f"dm device {name} is in use (open {dev.open_count} time(s)); stop what "
                        "uses it first")
    result = _run.run(remove_argv(name), timeout=timeout, check=False,
                      what=f"removing dm device {name}")
    if result.returncode != 0 and not _missing(result):
        raise _run.failure(result, f"removing dm device {name}")
    return True


def message(name, text, sector=0, timeout=QUERY_TIMEOUT):
    """Send a target message; returns what the target answered (stats messages answer)."""
    result = _run.run(["dmsetup", "message", name, str(int(sector)), *text.split()],
                      timeout=timeout, what=f"sending `{text}` to dm device {name}")
    return result.stdout


def settle(timeout=SETTLE_TIMEOUT):
    """Wait for udev to finish (probes of a new device read it: better before measuring)."""
    _run.run(["udevadm", "settle", f"--timeout={int(timeout)}"], timeout=timeout + 10,
             check=False, what="waiting for udev")


# -- dm-stats (through messages: `dmsetup stats` prints some regions twice) -------------------

@dataclass
class Area:
    start: int  # sectors
    length: int
    reads: int
    writes: int


def stats_create(name, area_sectors, program_id):
    """A stats region over the whole device with areas of area_sectors; returns its id."""
    out = message(name, f"@stats_create - {int(area_sectors)} {program_id}")
    try:
        return int(out.strip())
    except ValueError:
        raise NodeError(f"dm device {name}: unexpected answer to @stats_create: {out.strip()!r}")


def stats_regions(name, program_id):
    """Ids of the stats regions of this program on the device."""
    out = message(name, f"@stats_list {program_id}")
    ids = []
    for line in out.splitlines():
        head = line.split(":", 1)[0].strip()
        if head.isdigit():
            ids.append(int(head))
    return ids


def parse_stats_print(text):
    """Lines `<start>+<len> <reads> <reads merged> <sectors read> ... <writes> ...` -> Areas."""
    areas = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or "+" not in parts[0]:
            continue
        start, length = parts[0].split("+")
        areas.append(Area(int(start), int(length), int(parts[1]), int(parts[5])))
    return areas


def stats_print(name, region_id, clear=False):
    verb = "@stats_print_clear" if clear else "@stats_print"
    return parse_stats_print(message(name, f"{verb} {int(region_id)}"))


def stats_clear(name, region_id):
    message(name, f"@stats_clear {int(region_id)}")
