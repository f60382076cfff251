"""Where image data comes from for `cp` and `stat`: a local path or an http(s) URL, raw or qcow2.
Everything is streamed: the front-end never holds a whole image."""
import os
import struct
import urllib.request

from ..errors import DriverError

QCOW2_MAGIC = b"QFI\xfb"
URL_TIMEOUT = 60


# What oned's own fs datastore refuses whatever the datastore says (libfs.sh set_up_datastore):
# oned's state, its configuration, and oneadmin's home (its one_auth).
ALWAYS_RESTRICTED = ("/var/lib/one/", "/etc/one/")
PATH_MAX = 4096


def is_url(path):
    return path.startswith(("http://", "https://"))


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
    if is_url(path):
        return path
    if "://" in path:
        raise DriverError(f"image PATH {path[:80]!r}: only http:// and https:// URLs and local "
                          "paths can be imported")
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


def open_stream(path):
    """(file object, total bytes or None)."""
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
    stream, length = open_stream(path)
    try:
        head = stream.read(512)
    finally:
        stream.close()
    if head[:4] == QCOW2_MAGIC and len(head) >= 32:
        # qcow2 header: magic, version, backing offset/size, cluster bits, then the virtual size.
        (virtual_size,) = struct.unpack(">Q", head[24:32])
        return "qcow2", virtual_size
    if length is None:
        raise DriverError(f"{path} does not say its size (no Content-Length); cannot size the LV")
    return "raw", length


def size_mib(size_bytes):
    return max(1, -(-size_bytes // (1 << 20)))
