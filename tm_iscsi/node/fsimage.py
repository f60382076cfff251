"""A filesystem inside an image, offline, on the storage node: the partition (sfdisk), the
filesystem (blkid), a private mount, a path inside it that never leaves it, a directory read out
as tar.gz and a tar.gz written into it.

Everything here runs as root on a guest's data: a path inside the image is walked component by
component without following a symbolic link (a guest's `/data -> /etc` would otherwise lead into
the storage node's own /etc), and a tar member is written only where that walk allows."""
import contextlib
import json
import os
import subprocess
import tarfile
import tempfile

from .. import protocol
from . import run as _run
from .errors import NodeError
from .lvops import fs_type

# Supported filesystems and how each is mounted. ro: an ext4 or xfs with a dirty journal still
# replays it, into the thin snapshot being read, never into the image. xfs: nouuid, a snapshot
# shares its origin's UUID.
MOUNT_OPTIONS = {"ext4": "nodev,nosuid,noexec", "xfs": "nodev,nosuid,noexec,nouuid"}
MOUNT_ROOT = "/run/tm_iscsi/fs"
SECTOR = 512
TAR_TIMEOUT = 7200


class NoSpace(NodeError):
    pass


def check_inner_path(path):
    try:
        return protocol.image_path(path)
    except ValueError as err:
        raise NodeError(str(err))


def partition_span(device, number):
    """(offset bytes, size bytes) of partition `number` (1-based) of the disk in `device`."""
    result = _run.run(["sfdisk", "--json", device], timeout=60, check=False,
                      what=f"reading the partition table of {device}")
    if result.returncode != 0:
        raise NodeError(f"the image has no partition table (sfdisk: "
                        f"{_run.last_line(result.stderr) or result.returncode}): leave out "
                        "--partition for a filesystem on the whole disk")
    try:
        table = json.loads(result.stdout)["partitiontable"]
        parts = table.get("partitions") or []
        sector = int(table.get("sectorsize") or SECTOR)
    except (ValueError, KeyError, TypeError):
        raise NodeError(f"cannot read the partition table of {device}")
    if not 1 <= number <= len(parts):
        raise NodeError(f"the image has {len(parts)} partition(s), not a partition {number}")
    part = parts[number - 1]
    return int(part["start"]) * sector, int(part["size"]) * sector


@contextlib.contextmanager
def block_device(device, partition, read_only):
    """The device holding the filesystem: the whole disk, or a loop device over one partition."""
    if not partition:
        yield device
        return
    offset, size = partition_span(device, partition)
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    loop = _run.run(argv + (["--read-only"] if read_only else []) + [device], timeout=60,
                    what=f"attaching partition {partition} of {device}").stdout.strip()
    try:
        yield loop
    finally:
        _run.run(["losetup", "--detach", loop], timeout=60, check=False,
                 what=f"detaching {loop}")


def release_stale(device):
    """What a killed extract or overlay left on `device`: its mounts under MOUNT_ROOT and its
    loop devices, so the re-run can remove or write the LV. True when there was any."""
    real = os.path.realpath(device)
    listed = _run.run(["losetup", "--noheadings", "--output", "NAME", "--associated", real],
                      timeout=60, check=False, what=f"listing loop devices of {device}")
    loops = listed.stdout.split() if listed.returncode == 0 else []
    sources = {real, *loops}
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1] for line in mounts
                      if line.split()[0] in sources or
                      os.path.realpath(line.split()[0]) in sources]
    except OSError:
        points = []
    for point in reversed(points):
        if point.startswith(MOUNT_ROOT + "/"):
            _run.info(f"unmounting {point}, left by an earlier run")
            _run.run(["umount", point], timeout=300, what=f"unmounting {point}")
            with contextlib.suppress(OSError):
                os.rmdir(point)
        else:
            raise NodeError(f"{device} is mounted on {point}: unmount it first")
    for loop in loops:
        _run.run(["losetup", "--detach", loop], timeout=60, check=False,
                 what=f"detaching {loop}")
    return bool(points or loops)


def filesystem_of(device, where):
    found = fs_type(device)
    if found not in MOUNT_OPTIONS:
        raise NodeError(f"{where} holds {'no filesystem' if found is None else found}: "
                        f"{' and '.join(MOUNT_OPTIONS)} are supported (a partitioned image: "
                        "--partition N)")
    return found


@contextlib.contextmanager
def mounted(device, fs, read_only):
    os.makedirs(MOUNT_ROOT, mode=0o700, exist_ok=True)
    point = tempfile.mkdtemp(dir=MOUNT_ROOT)
    options = MOUNT_OPTIONS[fs] + (",ro" if read_only else "")
    try:
        _run.run(["mount", "-t", fs, "-o", options, device, point], timeout=300,
                 what=f"mounting the {fs} filesystem of {device}")
        try:
            yield point
        finally:
            _run.run(["umount", point], timeout=300, what=f"unmounting {point}")
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(point)


def resolve(root, inner, must_exist=True):
    """The host path of `inner` under the mount `root`; a symbolic link on the way is refused,
    and so is a component that is not a directory."""
    parts = [p for p in inner.split("/") if p]
    current = root
    for number, part in enumerate(parts, 1):
        current = os.path.join(current, part)
        shown = "/" + "/".join(parts[:number])
        if os.path.islink(current):
            raise NodeError(f"{inner}: {shown} in the image is a symbolic link: give the path "
                            "it leads to")
        if not os.path.lexists(current):
            if must_exist:
                raise NodeError(f"the image has no {inner}")
            return os.path.join(current, *parts[number:])
        if number < len(parts) and not os.path.isdir(current):
            raise NodeError(f"{inner}: {shown} in the image is not a directory")
    return current


def tar_out(root, inner, sink):
    """`inner` (a directory or a file) of the mounted filesystem as tar.gz on `sink`, owners and
    modes kept numerically."""
    target = resolve(root, inner)
    parent, name = (root, ".") if target == root else os.path.split(target)
    proc = subprocess.Popen(["tar", "-czf", "-", "--numeric-owner", "--one-file-system",
                             "-C", parent, name], stdout=sink, stderr=subprocess.PIPE,
                            env=dict(os.environ, LC_ALL="C"))
    try:
        _out, err = proc.communicate(timeout=TAR_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise NodeError(f"reading {inner} out of the image took more than {TAR_TIMEOUT}s")
    if proc.returncode not in (0,):
        raise NodeError(f"reading {inner} out of the image failed: "
                        f"{_run.last_line(err.decode(errors='replace'))}")


def tar_in(root, at, source):
    """A tar.gz stream from `source` written under `at` of the mounted filesystem (made if
    missing); every member lands inside, links included. Returns (files, bytes)."""
    base = resolve(root, at, must_exist=False)
    os.makedirs(base, exist_ok=True)
    resolve(root, at)
    files = written = 0
    try:
        with tarfile.open(fileobj=source, mode="r|gz") as archive:
            for member in archive:
                _check_member(root, base, member)
                archive.extract(member, base, set_attrs=True, numeric_owner=True)
                files += 1
                written += member.size if member.isfile() else 0
    except OSError as err:
        if err.errno == 28:
            raise NoSpace(f"the image's filesystem is full after {written >> 20} MiB: make "
                          "the image larger (oneimage resize) or overlay less")
        raise NodeError(f"writing into the image failed: {err}")
    except (tarfile.TarError, EOFError, ValueError) as err:
        raise NodeError(f"the overlay is not a readable tar.gz stream: {err}")
    return files, written


def _check_member(root, base, member):
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not name.isprintable():
        raise NodeError(f"the overlay's member {name[:80]!r} would land outside {base[len(root):] or '/'}")
    if member.isdev():
        raise NodeError(f"the overlay's member {name[:80]!r} is a device node: refused")
    if member.islnk():
        link = [p for p in member.linkname.split("/") if p not in ("", ".")]
        if member.linkname.startswith("/") or ".." in link:
            raise NodeError(f"the overlay's hard link {name[:80]!r} points outside it")
    resolve(root, "/".join([base[len(root):]] + parts[:-1]) or "/", must_exist=False)
    existing = os.path.join(base, *parts) if parts else base
    if parts and os.path.islink(existing):
        os.unlink(existing)    # replaced by the member, never written through
