"""mv (stop, undeploy, resume, cold migrate) and the VM directory moves and deletes.

A disk never moves: it lives on the storage node. Moving means the source host lets go of it and
the destination host gets it. The front-end (oned's host, where stopped and undeployed VMs are
parked) holds no disk, only the VM directory's files (e.g. a checkpoint)."""
import os
import shutil
import subprocess
import tempfile

from .. import attachment, log, volumes
from ..errors import DriverError


def mv(ctx, args):
    if args.src.is_disk:
        _mv_disk(ctx, args)
    else:
        _mv_dir(ctx, args.src, args.dst)


def _mv_disk(ctx, args):
    vm = ctx.vm(args.vmid)
    disk_id = args.src.disk_id
    if vm.find_disk(disk_id) is None:
        return  # the context disk travels with the VM directory
    volume = volumes.of_disk(ctx, vm, disk_id, args.dsid)
    mode, image_lv = volumes.cache_plan(vm, disk_id, volume)
    src_is_host = not ctx.is_frontend(args.src.host)
    dst_is_host = not ctx.is_frontend(args.dst.host)
    if src_is_host and (args.src.host != args.dst.host or args.src.path != args.dst.path):
        # Stop, undeploy, cold migrate: every dirty block reaches the storage node first.
        attachment.detach(ctx, args.src.host, [attachment.Release(
            volume, args.src.path, flush=True, image_lv=image_lv)])
    if dst_is_host:
        attachment.attach(ctx, args.dst.host, [attachment.Attach(
            volume, args.dst.path, mode, image_lv)])


def _mv_dir(ctx, src, dst):
    if src.host == dst.host and src.path == dst.path:
        return
    copy_dir(ctx, src, dst)
    remove_dir(ctx, src.host, src.path)


def copy_dir(ctx, src, dst):
    """Copy the VM directory's files (not the disk links: those are made per host) from
    src to dst, either side possibly the front-end."""
    timeout = ctx.settings.copy_timeout
    if ctx.is_frontend(src.host):
        if not os.path.isdir(src.path):
            log.info(f"{src.path} does not exist on the front-end; nothing to copy")
            ctx.node(dst.host).call("dir-unpack", "--path", dst.path, stdin=_empty_tar())
            return
        pack = subprocess.Popen(["tar", "-C", src.path, "--exclude=./disk.[0-9]*", "-cf", "-", "."],
                                stdout=subprocess.PIPE)
        try:
            ctx.node(dst.host).call("dir-unpack", "--path", dst.path, stdin=pack.stdout,
                                    timeout=timeout)
        finally:
            pack.stdout.close()
            pack.wait()
        return
    if ctx.is_frontend(dst.host):
        os.makedirs(dst.path, exist_ok=True)
        unpack = subprocess.Popen(["tar", "-C", dst.path, "-xf", "-"], stdin=subprocess.PIPE)
        try:
            ctx.node(src.host).stream_out("dir-pack", "--path", src.path, sink=unpack.stdin,
                                          timeout=timeout)
        finally:
            unpack.stdin.close()
            if unpack.wait() != 0:
                raise DriverError(f"unpacking {src} into {dst.path} failed")
        return
    # Host to host: the front-end relays the stream (hosts need no SSH trust between them).
    relay = subprocess.Popen(ctx.node(src.host)._argv("dir-pack", ["--path", src.path]),
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ctx.node(dst.host).call("dir-unpack", "--path", dst.path, stdin=relay.stdout,
                                timeout=timeout)
    finally:
        relay.stdout.close()
        if relay.wait() != 0:
            raise DriverError(f"reading the VM directory {src} failed")


def _empty_tar():
    return subprocess.run(["tar", "-cf", "-", "-T", "/dev/null"], capture_output=True,
                          check=True).stdout


def pack_dir(ctx, host, path, flush=()):
    """The VM directory on `host` as tar bytes (what dir-unpack or host-attach --unpack-dir
    take), its write-back stacks `flush` flushed and kept clean first, in one call."""
    words = [w for name in flush for w in ("--flush", name)]
    with tempfile.TemporaryFile() as sink:
        ctx.node(host).stream_out("dir-pack", "--path", path, *words, sink=sink,
                                  timeout=ctx.settings.copy_timeout)
        sink.seek(0)
        return sink.read()


def unpack_dir(ctx, host, path, packed):
    ctx.node(host).call("dir-unpack", "--path", path, stdin=packed,
                        timeout=ctx.settings.copy_timeout)


def remove_dir(ctx, host, path):
    if ctx.is_frontend(host):
        shutil.rmtree(path, ignore_errors=True)
    else:
        ctx.node(host).call("path-remove", "--path", path)


def delete(ctx, args):
    from .disks import delete_disk
    if args.target.is_disk:
        delete_disk(ctx, args)
    else:
        remove_dir(ctx, args.target.host, args.target.path)
