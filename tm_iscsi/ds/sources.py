"""Where image data comes from for `cp` and `stat`: a local path, an http(s) URL, or a backup
in an OpenNebula backup datastore (`rsync://` or `restic://`, what `oneimage restore` asks DS cp
to import, fixture 30), raw or qcow2. Everything is streamed: the front-end never holds a whole
image."""
import os
import struct
import subprocess
import tempfile
import urllib.request

from ..errors import DriverError
from ..settings import remotes_dir

QCOW2_MAGIC = b"QFI\xfb"
URL_TIMEOUT = 60


# What oned's own fs datastore refuses whatever the datastore says (libfs.sh set_up_datastore):
# oned's state, its configuration, and oneadmin's home (its one_auth).
ALWAYS_RESTRICTED = ("/var/lib/one/", "/etc/one/")
PATH_MAX = 4096


# A backup datastore's URL: OpenNebula's own downloader (which asks the backup datastore's driver
# for the file, and rebuilds an increment's chain into one qcow2 first) gives its bytes.
BACKUP_SCHEMES = ("rsync://", "restic://")
# Backups of Ceph disks (rbd exports and diffs, tarred): not a disk image tm_iscsi can write.
RBD_SCHEMES = ("rsync+rbd://", "restic+rbd://")


def is_url(path):
    return path.startswith(("http://", "https://"))


def is_backup_url(path):
    return path.startswith(BACKUP_SCHEMES)


def downloader():
    return os.path.join(remotes_dir(), "datastore", "downloader.sh")


def _under(path, directory):
    directory = directory.rstrip("/")
    return not directory or path == directory or path.startswith(directory + "/")


def check_path(path, datastore):
    """An image PATH an image may be read from, as oned's fs datastore decides it: an http(s)
    URL, or an absolute local path not under RESTRICTED_DIRS (nor oned's own directories)
    unless under SAFE_DIRS (oned sets RESTRICTED_DIRS="/" and SAFE_DIRS="/var/tmp" on every
    datastore that sets neither). Returns the path; DriverError says which attribute to change."""
    if not isinstance(path, str) or not path or len(path) > PATH_MAX or "\x00" in path or \
            any(ord(c) < 32 for c in path):
        raise DriverError(f"image PATH {str(path)[:80]!r} is not a path or URL tm_iscsi reads")
    if is_url(path) or is_backup_url(path):
        return path
    if path.startswith(RBD_SCHEMES):
        raise DriverError(f"image PATH {path[:80]!r} is a backup of a Ceph disk (rbd format); "
                          "iscsi_lvm imports qcow2 and raw backups only")
    if "://" in path:
        raise DriverError(f"image PATH {path[:80]!r}: only http(s):// URLs, backups (rsync://, "
                          "restic://) and local paths can be imported")
    if not path.startswith("/"):
        raise DriverError(f"image PATH {path[:80]!r} is not an absolute path")
    real = os.path.realpath(path)
    attr = datastore.template_attr
    safe = (attr("SAFE_DIRS") or "").split()
    restricted = [*ALWAYS_RESTRICTED, os.path.expanduser("~") + "/",
                  *(attr("RESTRICTED_DIRS") or "").split()]
    if any(_under(real, d) for d in safe):
        return path
    if any(_under(real, d) for d in restricted):
        raise DriverError(f"not allowed to copy an image from {path[:200]}: it is under the "
                          f"datastore's RESTRICTED_DIRS ({' '.join(restricted)}); put it under "
                          "SAFE_DIRS or change them (onedatastore update)")
    return path


class _Downloaded:
    """The output of OpenNebula's downloader.sh as a file object; close() says whether the
    download failed (a stream cut short must not become an image)."""

    def __init__(self, path):
        self.path = path
        self.program = downloader()
        if not os.access(self.program, os.X_OK):
            raise DriverError(f"cannot import {path[:120]}: OpenNebula's downloader "
                              f"{self.program} is not there (is this the front-end?)")
        # stderr to a file: a pipe nobody reads while the image streams could fill and stall
        # the download.
        self._errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([self.program, "--nodecomp", path, "-"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._errors)
        self.closed = False

    def read(self, size=-1):
        return self.proc.stdout.read(size)

    def abandon(self):
        """Let go of the download because the write failed. Returns the downloader's own error
        if it had failed before that (the first cause), else None: once its reader is gone it
        dies of a broken pipe, which says nothing."""
        if self.closed:
            return None
        still_running = self.proc.poll() is None
        if still_running:
            self.proc.kill()
        try:
            self.close()
        except DriverError as err:
            return None if still_running else err
        return None

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.proc.stdout.close()
        try:
            self.proc.wait(timeout=URL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._errors.seek(0)
        err = self._errors.read().decode(errors="replace")
        self._errors.close()
        if self.proc.returncode != 0:
            lines = [l for l in err.splitlines() if l.strip()]
            raise DriverError(f"downloading {self.path[:120]} failed (downloader.sh exit "
                              f"{self.proc.returncode}): {lines[-1][:200] if lines else 'no reason given'}")


class _Prefixed:
    """`head` (already read off `stream`) and then the rest of `stream`."""

    def __init__(self, head, stream):
        self.head, self.stream = head, stream

    def read(self, size=-1):
        if self.head:
            if size is None or size < 0:
                data, self.head = self.head + self.stream.read(), b""
                return data
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.stream.read(size)

    def close(self):
        self.stream.close()

    def abandon(self):
        return abandon(self.stream)


def abandon(stream):
    """Close `stream` after the write it fed failed: the download's own error if it had failed
    first (the cause worth reporting), else None."""
    if hasattr(stream, "abandon"):
        return stream.abandon()
    stream.close()
    return None


def open_image(path):
    """(file object, format, virtual size in bytes or None, length in bytes or None), opened once:
    the format is read from the first bytes of the very stream that is then written."""
    stream, length = open_stream(path)
    try:
        head = stream.read(512)
    except BaseException:
        stream.close()
        raise
    fmt, virtual = _format_of(head, length)
    return _Prefixed(head, stream), fmt, virtual, length


def _format_of(head, length):
    if head[:4] == QCOW2_MAGIC and len(head) >= 32:
        # qcow2 header: magic, version, backing offset/size, cluster bits, then the virtual size.
        (virtual_size,) = struct.unpack(">Q", head[24:32])
        return "qcow2", virtual_size
    return "raw", length


def open_stream(path):
    """(file object, total bytes or None)."""
    if is_backup_url(path):
        return _Downloaded(path), None
    if is_url(path):
        try:
            response = urllib.request.urlopen(path, timeout=URL_TIMEOUT)
        except OSError as err:
            raise DriverError(f"cannot download {path}: {err}")
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None
    try:
        return open(path, "rb"), os.path.getsize(path)
    except OSError as err:
        raise DriverError(f"cannot read {path} on the front-end: {err.strerror}")


def probe(path):
    """(format, virtual size in bytes) from the first bytes of the image."""
    if is_backup_url(path):
        raise DriverError(f"{path[:120]} is a backup: its size is the backup datastore's to say "
                          "(oned asks it, not this datastore)")
    stream, fmt, size, length = open_image(path)
    stream.close()
    if fmt == "qcow2":
        return fmt, size
    if length is None:
        raise DriverError(f"{path} does not say its size (no Content-Length); cannot size the LV")
    return "raw", length


def size_mib(size_bytes):
    return max(1, -(-size_bytes // (1 << 20)))
