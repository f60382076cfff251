"""The VM directory's tar stream as host-attach and dir-unpack unpack it: from a stream a caller
may already have read lines from (real tar; only the oneadmin switch is left out)."""
import contextlib
import io
import os
import tarfile

import pytest

from tm_iscsi.node import paths, vmdir
from tm_iscsi.node.errors import NodeError


@pytest.fixture
def as_caller(mocker):
    mocker.patch.object(paths, "checked", side_effect=lambda path: path)
    mocker.patch.object(paths, "makedirs_owned", side_effect=lambda path: os.makedirs(
        path, exist_ok=True))
    mocker.patch.object(paths, "owner_of_tree", return_value=(os.getuid(), os.getgid()))
    mocker.patch.object(paths, "oneadmin_subprocess", return_value={})
    mocker.patch.object(paths, "as_oneadmin", side_effect=contextlib.nullcontext)
    mocker.patch.object(vmdir, "lock", side_effect=lambda *a: contextlib.nullcontext())


def _tar(files):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_rest_of_a_stream_after_a_line_read_from_it_is_unpacked(as_caller, tmp_path):
    stream = io.BufferedReader(io.BytesIO(b"secret-line\n" + _tar({
        "./disk.1": b"context iso", "./deployment.0": b"<domain/>"})))
    assert stream.readline() == b"secret-line\n"
    target = tmp_path / "vm" / "7"
    assert vmdir.unpack(str(target), stream) == str(target)
    assert (target / "disk.1").read_bytes() == b"context iso"
    assert (target / "deployment.0").read_bytes() == b"<domain/>"


def test_a_stream_that_is_not_a_tar_is_one_line(as_caller, tmp_path):
    with pytest.raises(NodeError, match="unpacking into .* failed"):
        vmdir.unpack(str(tmp_path / "8"), io.BytesIO(b"not a tar at all" * 100))


def test_pack_then_unpack_keeps_the_files_but_not_the_disk_links(as_caller, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "deployment.0").write_text("<domain/>")
    (source / "disk.0").symlink_to("/dev/null")
    packed = tmp_path / "packed.tar"
    with open(packed, "wb") as out:
        vmdir.pack(str(source), out)
    with open(packed, "rb") as stream:
        vmdir.unpack(str(tmp_path / "dst"), stream)
    assert sorted(os.listdir(tmp_path / "dst")) == ["deployment.0"]
