"""`onevm restore VM BACKUP_IMAGE [--increment N] [--disk-id D]` (fixture 30): the powered-off
VM's disks take the content of a backup, in place.

oned calls `restore <host>:<vm dir> <vm id> <backup image id> <increment id|-1> <disk id|-1>`
(no datastore id). The backup datastore's own driver says where each disk's backup is (its `ls
-i <increment>`: a JSON map of disk id to URL), OpenNebula's downloader gives the bytes (for an
increment, the chain rebuilt into one qcow2), and each disk's backup is written into a scratch
LV next to the disk first (`<lv>-restore`); only when every disk's backup is complete are the
disks swapped (the same replace-by-rename as a snapshot revert), their hosts' caches of the old
content dropped. A failure before the swap leaves the VM's disks as they were."""
import json
import os
import re
import subprocess

from .. import log, naming, volumes
from ..ds import sources
from ..errors import DriverError
from ..one.states import ImageType
from ..settings import remotes_dir
from . import snapshots, storage

_DS_MAD_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
LS_TIMEOUT = 600


def _backup_urls(ctx, vm, image, increment_id):
    """{disk id: URL} of the backup, from the backup datastore's own `ls -i`."""
    bk_ds = ctx.one.datastore_info(image.integer("DATASTORE_ID"))
    ds_mad = (bk_ds.text("DS_MAD") or "").strip()
    if not _DS_MAD_RE.match(ds_mad):
        raise DriverError(f"backup image {image.id} is in datastore {bk_ds.id} whose DS_MAD "
                          f"{ds_mad[:40]!r} is no driver name")
    program = os.path.join(remotes_dir(), "datastore", ds_mad, "ls")
    if not os.access(program, os.X_OK):
        raise DriverError(f"the backup datastore driver {program} is not on this front-end")
    document = (f"<DS_DRIVER_ACTION_DATA>{_strip_prolog(bk_ds.xml)}{_strip_prolog(vm.xml)}"
                f"{_strip_prolog(image.xml)}</DS_DRIVER_ACTION_DATA>")
    try:
        done = subprocess.run([program, "-i", str(increment_id)], input=document.encode(),
                              capture_output=True, timeout=LS_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DriverError(f"{program} -i {increment_id} did not answer within {LS_TIMEOUT}s")
    if done.returncode != 0:
        lines = [l for l in done.stderr.decode(errors="replace").splitlines() if l.strip()]
        raise DriverError(f"cannot list backup image {image.id}: {ds_mad} ls exit "
                          f"{done.returncode}: {lines[-1][:200] if lines else 'no reason given'}")
    try:
        listing = json.loads(done.stdout.decode(errors="replace") or "{}")
    except ValueError:
        raise DriverError(f"{ds_mad} ls printed no JSON map of disks for backup image {image.id}")
    if not isinstance(listing, dict) or not all(isinstance(v, str) for v in listing.values()):
        raise DriverError(f"{ds_mad} ls printed no JSON map of disks for backup image {image.id}")
    # A TPM state ("tpm") is the hypervisor's, not a disk.
    return {int(k): v for k, v in listing.items() if k.isascii() and k.isdigit()}


def _strip_prolog(xml):
    return re.sub(r"^\s*<\?xml[^>]*\?>", "", xml)


def restore(ctx, args):
    vm = ctx.vm(args.vmid)
    image = ctx.one.image_info(args.backup_image_id)
    if image.type != ImageType.BACKUP:
        raise DriverError(f"image {image.id} is not a backup (TYPE {image.text('TYPE')})")
    urls = _backup_urls(ctx, vm, image, args.increment_id)
    wanted = sorted(urls) if args.all_disks else [args.disk_id]
    missing = [d for d in wanted if d not in urls]
    if missing:
        raise DriverError(f"backup image {image.id} holds no disk {missing[0]} "
                          f"(it has {', '.join(map(str, sorted(urls))) or 'none'})")
    disks = []
    for disk_id in wanted:
        vm.disk(disk_id)
        volume = volumes.of_disk(ctx, vm, disk_id)
        if volume.readonly:
            raise DriverError(f"VM {vm.id} disk {disk_id} is read-only; it is not restored")
        disks.append((disk_id, volume))
    # Every backup complete next to its disk before any disk changes.
    for disk_id, volume in disks:
        _download(ctx, volume, urls[disk_id])
    host = args.vm_dir.host
    for disk_id, volume in disks:
        _swap(ctx, vm, disk_id, volume, host, os.path.join(args.vm_dir.path, f"disk.{disk_id}"))
    log.info(f"VM {vm.id}: disks {', '.join(str(d) for d, _ in disks)} restored from backup "
             f"image {image.id}" + (f" increment {args.increment_id}"
                                    if args.increment_id != -1 else ""))


def _download(ctx, volume, url):
    ds, scratch = volume.ds, naming.restore_lv(volume.lv)
    info = storage.lv_info(ctx, ds, volume.lv)
    if not info.get("exists"):
        raise DriverError(f"{ds.vg}/{volume.lv} does not exist; nothing to restore onto")
    # Left by a run that failed: its content may be partial.
    storage.remove(ctx, ds, scratch, with_snapshots=False)

    def size_mib(fmt, virtual):
        if virtual is not None and virtual > info["size_bytes"]:
            raise DriverError(f"the backup of {volume.lv} ({virtual} bytes) is larger than the "
                              f"disk ({info['size_bytes']} bytes); resize the disk first")
        return sources.size_mib(info["size_bytes"])

    storage.create_from(ctx, ds, scratch, url, size_mib, kind="restore")


def _swap(ctx, vm, disk_id, volume, host, link):
    """The disk takes the scratch LV's content (its host's caches of the old content dropped,
    then rebuilt), and the scratch goes."""
    scratch = naming.restore_lv(volume.lv)
    snapshots.replace_content(ctx, vm, disk_id, volume, host, link, scratch,
                              remove_source=True)
