"""The backup's files and their chain, with the real qemu-img and qemu-io (a regular file stands
in for the point's iSCSI disk; what is tested is qcow2's semantics, which no device changes):
an increment holds exactly the changed clusters, a changed cluster that now reads as zeros
stays zero after the increment is rebased onto the previous file (it must not show the previous
point's data), unchanged clusters come from the previous file; and thin_delta's report turns
into the right byte ranges."""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from tm_iscsi import protocol
from tm_iscsi.node import backup_image, thindelta

MIB = 1 << 20
SIZE = 16 * MIB
CL = backup_image.CLUSTER

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img") or not shutil.which("qemu-io"),
                                reason="qemu-utils is not installed")


def _disk(path, blocks):
    """A disk image of SIZE bytes with `blocks` {offset: byte} of one cluster each."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, byte in blocks.items():
            f.seek(offset)
            f.write(bytes([byte]) * CL)
    return path


def _raw(path, out):
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(out)], check=True)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dir_fd(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_full_then_increment_rebuilds_each_point(tmp_path):
    first = _disk(tmp_path / "p0", {0: 1, 3 * CL: 2, 100 * CL: 3})
    # Point 1: a cluster rewritten, one zeroed (a discard), one new; the rest unchanged.
    second = _disk(tmp_path / "p1", {0: 1, 3 * CL: 9, 200 * CL: 4})
    out = tmp_path / "out"
    out.mkdir()
    fd = _dir_fd(out)
    try:
        backup_image.write_full(str(first), fd, "disk.0.0")
        changed = [(3 * CL, CL), (100 * CL, CL), (200 * CL, CL)]
        read = backup_image.write_delta(str(second), fd, "disk.0.1", SIZE, changed)
    finally:
        os.close(fd)
    assert read == 3 * CL
    assert sorted(os.listdir(out)) == ["disk.0.0", "disk.0.1"]   # no scratch file left
    assert _raw(out / "disk.0.0", tmp_path / "r0") == _sha(first)
    # The increment alone: exactly the three clusters are allocated, one of them as zeros.
    mapping = subprocess.run(["qemu-img", "map", "--output=json", str(out / "disk.0.1")],
                             check=True, capture_output=True, text=True).stdout
    data = [(m["start"], m["length"]) for m in json.loads(mapping) if m["data"]]
    assert data == [(3 * CL, CL), (200 * CL, CL)]
    # Rebased onto the full point, as the backup datastore does, it is point 1 exactly.
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(out / "disk.0.0"),
                    str(out / "disk.0.1")], check=True)
    assert _raw(out / "disk.0.1", tmp_path / "r1") == _sha(second)
    assert (out / "disk.0.1").stat().st_size < 2 * MIB


def test_a_failed_write_leaves_no_file(tmp_path):
    disk = _disk(tmp_path / "p", {0: 1})
    out = tmp_path / "out"
    out.mkdir()
    fd = _dir_fd(out)
    try:
        with pytest.raises(Exception):
            backup_image.write_delta(str(disk), fd, "disk.0.1", SIZE, [(SIZE - CL, 2 * CL)])
    finally:
        os.close(fd)
    assert os.listdir(out) == []


THIN_DELTA = """<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="0">
  <diff left="1" right="2">
    <same begin="0" length="3"/>
    <different begin="3" length="2"/>
    <right_only begin="5" length="1"/>
    <same begin="6" length="4"/>
    <left_only begin="10" length="1"/>
    <right_only begin="1000" length="5"/>
  </diff>
</superblock>"""


def test_thin_delta_report_becomes_merged_byte_ranges_within_the_disk():
    # Blocks of 128 sectors (64 KiB); 3-4 and 5 merge; blocks past the disk's end are cut.
    ranges = thindelta.parse(THIN_DELTA, size_bytes=1002 * CL)
    assert ranges == [(3 * CL, 3 * CL), (10 * CL, CL), (1000 * CL, 2 * CL)]


def test_thin_delta_without_a_report_is_one_line():
    from tm_iscsi.node.errors import NodeError
    with pytest.raises(NodeError, match="thin_delta"):
        thindelta.parse("not xml", 1 << 20)


def test_pool_device_names_double_the_dashes():
    assert thindelta.pool_devices("vg-one-100", "tpool") == (
        "/dev/mapper/vg--one--100-tpool-tpool", "/dev/mapper/vg--one--100-tpool_tmeta")


def test_backup_payload_round_trips_and_refuses_what_is_not_one():
    text = protocol.backup_payload("PFZNLz4=", {1: [[0, CL]], 0: []})
    assert protocol.parse_backup_payload(text) == ("PFZNLz4=", {0: [], 1: [(0, CL)]})
    for bad in (b"", b"[]", b'{"vm_xml":"<x>","ranges":{}}', b'{"vm_xml":"","ranges":{"a":[]}}',
                b'{"vm_xml":"","ranges":{"0":[[0,0]]}}', b'{"vm_xml":"","ranges":{"0":[[-1,5]]}}',
                b'{"vm_xml":"","ranges":{},"x":1}', b"\xff"):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_backup_payload(bad)


def test_a_chain_flattened_as_keep_last_does_still_restores_every_kept_point(tmp_path):
    """The rsync backup datastore's increment_flatten (KEEP_LAST): the oldest files rebased,
    committed into the first, which takes the last one's name; the points kept are intact."""
    states = [{0: 1, 5 * CL: 2}, {0: 1, 5 * CL: 7, 9 * CL: 3}, {0: 4, 9 * CL: 3, 12 * CL: 5}]
    disks = [_disk(tmp_path / f"p{n}", blocks) for n, blocks in enumerate(states)]
    changed = [None, [(5 * CL, CL), (9 * CL, CL)], [(0, CL), (5 * CL, CL), (12 * CL, CL)]]
    out = tmp_path / "out"
    out.mkdir()
    fd = _dir_fd(out)
    try:
        backup_image.write_full(str(disks[0]), fd, "disk.0.0")
        for n in (1, 2):
            backup_image.write_delta(str(disks[n]), fd, f"disk.0.{n}", SIZE, changed[n])
    finally:
        os.close(fd)
    files = [out / f"disk.0.{n}" for n in range(3)]
    # KEEP_LAST=2 over increments 0, 1, 2: 0 and 1 are merged into one file named disk.0.1.
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(files[0]),
                    str(files[1])], check=True)
    subprocess.run(["qemu-img", "commit", "-f", "qcow2", "-b", str(files[0]), str(files[1])],
                   check=True)
    os.replace(files[0], files[1])
    assert _raw(files[1], tmp_path / "r1") == _sha(disks[1])
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(files[1]),
                    str(files[2])], check=True)
    assert _raw(files[2], tmp_path / "r2") == _sha(disks[2])
