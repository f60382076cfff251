"""The VM directory as a tar stream, packed and unpacked as oneadmin: what dir-pack / dir-unpack
and host-attach (a live migration's destination) share."""
import os
import subprocess

from . import paths
from .errors import NodeError
from .locks import lock

# Bulk data: the context ISO, a checkpoint. Longer than any transaction on a sane directory.
TAR_TIMEOUT = 3600


def pack(path, out):
    """The directory (without its disk links) as a tar stream into the binary file `out`."""
    path = paths.checked(path)
    if not os.path.isdir(path):
        argv = ["tar", "-cf", "-", "-T", "/dev/null"]
    else:
        argv = ["tar", "-C", path, "--exclude=./disk.[0-9]*", "-cf", "-", "."]
    # tar reads as oneadmin: it can pack nothing oneadmin could not read itself.
    result = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, timeout=TAR_TIMEOUT,
                            **paths.oneadmin_subprocess())
    if result.returncode != 0:
        raise NodeError(f"tar of {path} failed: {result.stderr.decode(errors='replace').strip()}")


def unpack(path, stream):
    """Create the directory and unpack the tar stream read from the binary file `stream` into
    it. The stream is copied through this process (not handed to tar as fd 0): a caller may
    have read lines before it (CHAP secrets) into its own buffer."""
    path = paths.checked(path)
    with lock("vmdir", path):
        paths.makedirs_owned(path)
        paths.checked(path)   # made now: still no link on the way
        uid, gid = paths.owner_of_tree(os.path.join(path, "x"))
        # tar writes as oneadmin: a link in the stream or the directory leads nowhere oneadmin
        # could not write itself.
        tar = subprocess.Popen(["tar", "-C", path, "--no-same-owner", "--no-same-permissions",
                                "-xf", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               **paths.oneadmin_subprocess())
        try:
            import shutil   # a live migration's only: every other host call skips its import
            shutil.copyfileobj(stream, tar.stdin)
        except BrokenPipeError:
            pass   # tar stopped reading: its exit code and message say why
        finally:
            try:
                tar.stdin.close()
            except BrokenPipeError:
                pass
        # Its input is closed: tar ends on its own (stderr is a few lines at most).
        stderr = tar.stderr.read()
        try:
            tar.wait(timeout=TAR_TIMEOUT)
        except subprocess.TimeoutExpired:
            tar.kill()
            raise NodeError(f"unpacking into {path} did not finish within {TAR_TIMEOUT}s")
        if tar.returncode != 0:
            raise NodeError(f"unpacking into {path} failed: "
                            f"{stderr.decode(errors='replace').strip()}")
        with paths.as_oneadmin():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    full = os.path.join(root, name)
                    if not os.path.islink(full):
                        os.chown(full, uid, gid)
    return path
