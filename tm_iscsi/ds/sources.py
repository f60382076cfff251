"""Where image data comes from for `cp` and `stat`: a local path or an http(s) URL, raw or qcow2.
Everything is streamed: the front-end never holds a whole image."""
import os
import struct
import urllib.request

from ..errors import DriverError

QCOW2_MAGIC = b"QFI\xfb"
URL_TIMEOUT = 60


def is_url(path):
    return path.startswith(("http://", "https://"))


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
