"""TM restore (`onevm restore`, fixture 30) and DS cp of a backup URL (`oneimage restore`) with
the nodes replaced by a recorder and the backup datastore by harness/backup_ds.py's stand-ins
(its `ls -i` and OpenNebula's downloader): every disk's backup is written next to the disk
before any disk changes; a refusal asks no node; a download that fails half-way leaves no
image. The bytes are proven in tests/lab/test_backup.py."""
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from harness import backup_ds, fixtures
from tm_iscsi import settings as settings_mod
from tm_iscsi.context import ActionContext
from tm_iscsi.one.objects import Datastore, Image, VirtualMachine
from tm_iscsi.tm import main as tm_main

from test_tm_actions import HOST1_IQN, TRANSACTIONS, FakeOne, RecordingNode, _ds, before_each

VM_DIR = "host1:/var/lib/one//datastores/101/0"


class BackupOne(FakeOne):
    def __init__(self, vms, datastores, images):
        super().__init__(vms, datastores)
        self.images = images

    def image_info(self, image_id):
        return self.images[image_id]


def _qcow2(path, mib=1):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{mib}M"], check=True)
    return path


@pytest.fixture
def world(tmp_path, monkeypatch):
    # A backup datastore keeps its backups under <datastores>/<its id> (rsync_downloader.rb
    # finds the VM id in the path that way).
    base = tmp_path / "datastores" / "102"
    for number, source in enumerate(["aaa111", "bbb222"]):
        folder = base / "0" / source
        folder.mkdir(parents=True)
        for disk_id in (0, 1):
            _qcow2(folder / f"disk.{disk_id}.{number}")
    tree = backup_ds.remotes(tmp_path / "remotes")
    monkeypatch.setenv("TM_ISCSI_REMOTES_DIR", str(tree))
    monkeypatch.setenv(backup_ds.BASE_ENV, str(base))
    vm = VirtualMachine.from_xml(
        (fixtures.folder("28-backup-full-live") / "01-tm-prebackup_live.vm.xml").read_text())
    ds_xml = (fixtures.folder("27-backup-full-poweroff") / "ds-102.xml").read_text()
    root = ET.fromstring(ds_xml)
    root.find("BASE_PATH").text = str(base)
    # The capture ran a probe under another name; OpenNebula's driver is `rsync`.
    root.find("DS_MAD").text = backup_ds.DS_MAD
    image = ET.fromstring((fixtures.folder("29-backup-incremental") /
                           "image-4.after-backup3.xml").read_text())
    for inc, (number, source) in zip(image.findall("BACKUP_INCREMENTS/INCREMENT"),
                                     enumerate(["aaa111", "bbb222"])):
        inc.find("ID").text, inc.find("SOURCE").text = str(number), source
    one = BackupOne({0: vm}, {100: _ds(100, CACHE_MODE="read+writeback"),
                              101: _ds(101, VG_NAME="vg-one-100"),
                              102: Datastore.from_xml(ET.tostring(root, encoding="unicode"))},
                    {4: Image.from_xml(ET.tostring(image, encoding="unicode"))})
    calls, writes = [], []

    def lv_write(host, args):
        return {"bytes_written": 1}
    answers = {
        **TRANSACTIONS, "initiator": {"iqn": HOST1_IQN},
        "lv-info": {"exists": True, "size_bytes": 64 << 20},
        "lv-create": {"created": True}, "lv-remove": {"removed": True},
        "unexport": {}, "lv-revert": {}, "lv-list": {"lvs": []}, "lv-write": lv_write,
    }
    settings = settings_mod.load({"TM_ISCSI_FRONTEND": "frontend", "TM_ISCSI_CONF": "/none"})
    ctx = ActionContext(settings=settings, one=one)

    class Node(RecordingNode):
        def call(self, command, *args, **kwargs):
            if command == "lv-write":
                writes.append(kwargs["stdin"].read())
            return super().call(command, *args, **kwargs)
    ctx.node = lambda host: Node(host, calls, answers)
    return ctx, calls, writes, base


def _run(ctx, line, capsys):
    code = tm_main.run("restore", line.split(), ctx=ctx)
    err = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("INFO:")]
    return code, err


def test_every_disk_is_written_aside_before_any_disk_changes(world, capsys):
    ctx, calls, writes, _ = world
    code, err = _run(ctx, f"{VM_DIR} 0 4 -1 -1", capsys)
    assert code == 0 and err == [], err
    commands = [(h, c, a[3] if len(a) > 3 and a[2] == "--lv" else None) for h, c, a in calls]
    written = [i for i, (_, c, _) in enumerate(commands) if c == "lv-write"]
    first_change = min(i for i, (_, c, _) in enumerate(commands)
                       if c in ("host-detach", "lv-revert"))
    assert len(written) == 2 and max(written) < first_change
    assert [lv for _, c, lv in commands if c == "lv-write"] == [
        "vm-0-disk-0-restore", "img-1-restore"]
    reverts = [a for _, c, a in calls if c == "lv-revert"]
    assert [(a[3], a[5]) for a in reverts] == [("vm-0-disk-0", "vm-0-disk-0-restore"),
                                               ("img-1", "img-1-restore")]
    # Each disk gets its stack back after the swap; the scratch LVs go.
    assert [c for _, c, _ in calls][-2:] == ["storage-attach", "host-attach"]
    # What was written is the whole chain merged into one qcow2.
    assert all(w[:4] == b"QFI\xfb" for w in writes)


def test_one_disk_of_an_increment(world, capsys):
    ctx, calls, _, _ = world
    code, err = _run(ctx, f"{VM_DIR} 0 4 0 1", capsys)
    assert code == 0, err
    assert [a[3] for _, c, a in calls if c == "lv-write"] == ["img-1-restore"]


@pytest.mark.parametrize("line, fragment", [
    (f"{VM_DIR} 0 4 -1 7", "no disk 7"),
    (f"{VM_DIR} 0 4 9 -1", "no increment 9"),
])
def test_what_the_backup_does_not_hold_is_refused_before_any_node_call(world, capsys, line,
                                                                       fragment):
    ctx, calls, _, _ = world
    code, err = _run(ctx, line, capsys)
    assert code == 1 and len(err) == 1 and fragment in err[0], err
    assert calls == []


def test_a_backup_datastore_without_its_driver_is_one_line(world, capsys, monkeypatch, tmp_path):
    ctx, calls, _, _ = world
    os.unlink(tmp_path / "remotes" / "datastore" / "rsync" / "ls")
    code, err = _run(ctx, f"{VM_DIR} 0 4 -1 -1", capsys)
    assert code == 1 and "rsync/ls is not on this front-end" in err[0] and calls == []


def test_ds_cp_of_a_backup_url_reads_it_once_and_a_failed_download_leaves_no_image(
        world, capsys, tmp_path):
    from tm_iscsi.ds import main as ds_main
    ctx, calls, writes, base = world
    xml = (fixtures.folder("30-backup-restore") / "03-ds-cp.stdin.xml").read_text()
    url = f"rsync://102//0:aaa111,1:bbb222{base}/0/bbb222/disk.0"
    root = ET.fromstring(xml)
    root.find("IMAGE/PATH").text = url
    import base64
    stdin = base64.b64encode(ET.tostring(root)).decode()
    code = ds_main.run("cp", ["6"], stdin=stdin.encode(), ctx=ctx)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip() == "vg-one-100/img-6 raw"
    assert [c for _, c, _ in calls] == ["lv-create", "lv-write"]
    assert writes[0][:4] == b"QFI\xfb"
    # The increment is gone from the backup datastore: the downloader fails, the LV goes.
    os.unlink(base / "0" / "bbb222" / "disk.0.1")
    calls.clear()
    code = ds_main.run("cp", ["6"], stdin=stdin.encode(), ctx=ctx)
    err = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("INFO:")]
    assert code == 1 and len(err) == 1 and "downloading" in err[0], err
    assert "lv-remove" in [c for _, c, _ in calls] or calls == []
    json.dumps(err)


def test_a_write_that_fails_before_reading_the_download_reports_the_node_not_a_broken_pipe(
        world, capsys):
    """The storage node cannot be reached for the write: the administrator reads that, not the
    downloader's broken pipe that follows from it; the scratch LV goes."""
    from tm_iscsi.errors import DriverError
    ctx, calls, _, base = world
    for number, source in enumerate(["aaa111", "bbb222"]):
        # Larger than a pipe holds, so the downloader is still writing when the write fails.
        _qcow2(base / "0" / source / f"disk.0.{number}", mib=64)
        with open(base / "0" / source / f"disk.0.{number}", "r+b") as f:
            f.seek(1 << 20)
            f.write(os.urandom(1 << 20))

    def unreachable(host, args, kwargs):
        calls.append((host, "lv-write", list(args)))
        raise DriverError("storage: ssh: connect to host storage port 22: Connection refused")
    before_each(ctx, "lv-write", unreachable)
    code, err = _run(ctx, f"{VM_DIR} 0 4 -1 -1", capsys)
    assert code == 1 and len(err) == 1 and "Connection refused" in err[0], err
    assert "lv-remove" in [c for _, c, _ in calls]
