"""A stand-in for OpenNebula's rsync backup datastore on this machine, for the backup tests: what
its `backup` action keeps (the VM's backup directory under <BASE_PATH>/<vm id>/<backup id>/),
its `ls -i` (which disk files a backup holds, as the URLs TM restore downloads), and
OpenNebula's downloader for those URLs (an increment's chain rebased with `qemu-img rebase -u`
and merged into one qcow2, as rsync_downloader.rb does). It reads the same documents oned 7.4's
driver reads (fixture 29/30: IMAGE/BACKUP_INCREMENTS, DATASTORE/BASE_PATH) and refuses what that
driver would not find (no such increment, no such backup directory).

`remotes(dir)` makes a remotes tree of the project's scripts plus these two programs, for a
TransferManager / DatastoreManager run from it."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DS_MAD = "rsync"
# The base path the downloader reads (the rsync driver asks oned for the datastore's BASE_PATH).
BASE_ENV = "TM_ISCSI_TEST_BACKUP_BASE"


def remotes(root):
    """A remotes tree: our TM and DS scripts (copies: each finds its tree from its own path),
    the backup driver's `ls` and the downloader."""
    root = Path(root)
    for kind in ("tm", "datastore"):
        shutil.copytree(REPO / "remotes" / kind / "iscsi_lvm", root / kind / "iscsi_lvm",
                        dirs_exist_ok=True)
    for path, main in ((root / "datastore" / DS_MAD / "ls", "ls_main"),
                       (root / "datastore" / "downloader.sh", "downloader_main")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                        f"from harness.backup_ds import {main}\n{main}()\n")
        path.chmod(0o755)
    return root


def keep(base, vm_id, backup_id, files):
    """The rsync driver's `backup`: the host's backup directory copied to
    <base>/<vm id>/<backup id>/."""
    target = Path(base) / str(vm_id) / backup_id
    target.mkdir(parents=True)
    for path in files:
        shutil.copy(path, target / Path(path).name)
    return target


def _chain(image, increment_id):
    """[(increment id, source)] of the image up to `increment_id` (-1: all), oldest first."""
    increments = sorted((int(i.findtext("ID").strip()), i.findtext("SOURCE").strip())
                        for i in image.findall("BACKUP_INCREMENTS/INCREMENT"))
    if not increments:
        source = (image.findtext("SOURCE") or "").strip()
        return [(0, source)]
    if increment_id == -1:
        return increments
    chain = [(i, s) for i, s in increments if i <= increment_id]
    if not chain or chain[-1][0] != increment_id:
        raise SystemExit(f"backup image has no increment {increment_id}")
    return chain


def ls_main():
    args = sys.argv[1:]
    increment_id = int(args[args.index("-i") + 1]) if "-i" in args else -1
    root = ET.fromstring(sys.stdin.read())
    ds_id = root.findtext("DATASTORE/ID")
    base = root.findtext("DATASTORE/BASE_PATH")
    image = root.find("IMAGE")
    vm_id = root.findtext("VM/ID")
    chain = _chain(image, increment_id)
    text = ",".join(f"{i}:{s}" for i, s in chain)
    snap_dir = Path(os.path.normpath(f"{base}/{vm_id}/{chain[-1][1]}"))
    if not snap_dir.is_dir():
        raise SystemExit(f"Error listing backups: {snap_dir} does not exist")
    disks = {}
    for path in sorted(snap_dir.iterdir()):
        m = re.match(r"disk\.([0-9]+|tpm)", path.name)
        if m:
            disks[m.group(1)] = f"rsync://{ds_id}//{text}{path}"
    print(json.dumps(disks))


def downloader_main():
    args = [a for a in sys.argv[1:] if a != "--nodecomp"]
    url, dest = args[0], args[1]
    if dest != "-":
        raise SystemExit("this stand-in only streams to stdout")
    _proto, rest = url.split("://", 1)
    ds_id, _bj, increments, disk_path = rest.split("/", 3)
    disk_path = "/" + disk_path
    chain = [tuple(part.split(":")) for part in increments.split(",")]
    disk_index = os.path.basename(disk_path).split(".")[1]
    vm_id = re.search(rf"/{ds_id}/(\d+)/[^/]+/[^/]+$", disk_path).group(1)
    base = os.environ[BASE_ENV]
    paths = [os.path.normpath(f"{base}/{vm_id}/{snap}/disk.{disk_index}.{index}")
             for index, snap in chain]
    out = sys.stdout.buffer
    if len(paths) == 1:
        with open(paths[0], "rb") as f:
            shutil.copyfileobj(f, out)
        return
    with tempfile.TemporaryDirectory() as work:
        copies = []
        for path in paths:
            copy = os.path.join(work, os.path.basename(path))
            shutil.copy(path, copy)
            copies.append(copy)
        for backing, top in zip(copies, copies[1:]):
            subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", backing, top],
                           check=True)
        merged = os.path.join(work, "merged.qcow2")
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", copies[-1], merged], check=True)
        with open(merged, "rb") as f:
            shutil.copyfileobj(f, out)
