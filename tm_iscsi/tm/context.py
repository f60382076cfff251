"""context: the context CD-ROM (an ISO of context.sh and the listed files) built on the front-end
and put in the VM directory on the host. CONTEXT_DISK_TYPE defaults to FILE, so it is a file, not
a volume."""
import os
import shutil
import subprocess
import tempfile

from .. import log
from ..errors import DriverError

ISO_TOOLS = (("genisoimage", []), ("mkisofs", []), ("xorriso", ["-as", "mkisofs"]))


def _iso_argv(out, label, tree):
    for tool, prefix in ISO_TOOLS:
        path = shutil.which(tool)
        if path:
            return [path, *prefix, "-o", out, "-V", label, "-J", "-R", "-quiet", tree]
    raise DriverError("no ISO tool on the front-end: install genisoimage (or mkisofs/xorriso)")


def _copy(path, dest, what):
    try:
        shutil.copyfile(path, dest)
    except FileNotFoundError:
        raise DriverError(f"{what} {path} does not exist on the front-end")
    except OSError as err:
        raise DriverError(f"cannot read {what} {path} on the front-end: {err.strerror}")


def context(ctx, args):
    with tempfile.TemporaryDirectory(prefix="tm_iscsi-ctx-") as work:
        tree = os.path.join(work, "iso")
        os.mkdir(tree)
        _copy(args.context_script, os.path.join(tree, "context.sh"), "context script")
        for item in args.files:
            name = item.target or os.path.basename(item.path)
            _copy(item.path, os.path.join(tree, name), "context file")
        iso = os.path.join(work, "context.iso")
        result = subprocess.run(_iso_argv(iso, "CONTEXT", tree), capture_output=True, timeout=120)
        if result.returncode != 0:
            raise DriverError(f"building the context ISO failed: "
                              f"{result.stderr.decode(errors='replace').strip()[:200]}")
        with open(iso, "rb") as data:
            ctx.node(args.disk.host).call("file-put", "--path", args.disk.path,
                                          stdin=data, timeout=ctx.settings.ssh_timeout)
    log.info(f"context disk at {args.disk.host}:{args.disk.path}")
