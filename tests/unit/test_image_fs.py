"""Image extract and overlay off the kernel: paths inside an image (no '..', no symbolic link on
the way, even one the guest planted), tar members that would land outside or write through a
link, a full filesystem as one line; the front-end's calls, the new image deleted when the
overlay fails. The mounts, partitions and filesystems themselves are lab-tested
(tests/lab/test_image_fs.py)."""
import errno
import io
import os
import tarfile

import pytest

from tm_iscsi import protocol
from tm_iscsi.admin import cli
from tm_iscsi.errors import DriverError
from tm_iscsi.node import fsimage
from tm_iscsi.node.errors import NodeError

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    VG, cloud, image_xml, nodes, oned, runner)


@pytest.mark.parametrize("path, normal", [("/etc", "/etc"), ("//var/./www/", "/var/www"),
                                          ("/", "/")])
def test_inner_paths(path, normal):
    assert protocol.image_path(path) == normal


@pytest.mark.parametrize("path", ["etc", "/a/../b", "/a\nb", "", "/" + "x" * 5000, None])
def test_inner_paths_refused(path):
    with pytest.raises(ValueError):
        protocol.image_path(path)


def test_resolve_never_follows_a_link(tmp_path):
    root = tmp_path / "mnt"
    (root / "data").mkdir(parents=True)
    (root / "data" / "file").write_text("x")
    os.symlink("/etc", root / "data" / "evil")
    assert fsimage.resolve(str(root), "/data/file") == str(root / "data" / "file")
    with pytest.raises(NodeError, match="/data/evil in the image is a symbolic link"):
        fsimage.resolve(str(root), "/data/evil/passwd")
    with pytest.raises(NodeError, match="/data/file in the image is not a directory"):
        fsimage.resolve(str(root), "/data/file/x")
    with pytest.raises(NodeError, match="the image has no /nope"):
        fsimage.resolve(str(root), "/nope")
    assert fsimage.resolve(str(root), "/new/dir", must_exist=False) == str(root / "new" / "dir")


def _targz(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _file(name, data=b"x", mode=0o640, uid=1234, gid=5678):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_tar_in_writes_inside_with_modes(tmp_path):
    root = tmp_path / "mnt"
    root.mkdir()
    files, written = fsimage.tar_in(str(root), "/opt/app", _targz(_file("a/b.txt", b"hello")))
    assert (files, written) == (1, 5)
    target = root / "opt" / "app" / "a" / "b.txt"
    assert target.read_bytes() == b"hello" and target.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("member, message", [
    (_file("../escape"), "would land outside"),
    (_file("/abs"), "would land outside"),
    (_link("hard", "../../etc/passwd", tarfile.LNKTYPE), "points outside"),
])
def test_tar_in_refuses_members_that_leave(tmp_path, member, message):
    root = tmp_path / "mnt"
    root.mkdir()
    with pytest.raises(NodeError, match=message):
        fsimage.tar_in(str(root), "/opt", _targz(member))


def test_a_symlink_member_is_never_written_through(tmp_path):
    root = tmp_path / "mnt"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    archive = _targz(_link("d", str(outside)), _file("d/planted", b"no"))
    with pytest.raises(NodeError, match="symbolic link"):
        fsimage.tar_in(str(root), "/", archive)
    assert list(outside.iterdir()) == []


def test_a_full_filesystem_is_one_line(tmp_path, mocker):
    root = tmp_path / "mnt"
    root.mkdir()
    mocker.patch.object(tarfile.TarFile, "extract",
                        side_effect=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(fsimage.NoSpace, match="filesystem is full"):
        fsimage.tar_in(str(root), "/", _targz(_file("a")))


def test_not_a_targz_is_one_line(tmp_path):
    root = tmp_path / "mnt"
    root.mkdir()
    with pytest.raises(NodeError, match="not a readable tar.gz"):
        fsimage.tar_in(str(root), "/", io.BytesIO(b"plain text"))


def test_extract_calls_the_storage_node_and_refuses_before_any_call(cloud, oned, nodes,
                                                                    tmp_path, capsys):
    oned.put_xml(image_xml(3))
    nodes.streams["image-extract"] = b"\x1f\x8b tar.gz bytes"
    out = tmp_path / "d.tar.gz"
    assert cli.main(["image", "extract", "3", "/srv", "--out", str(out), "--partition", "2"],
                    cloud=cloud) == 0
    assert out.read_bytes() == b"\x1f\x8b tar.gz bytes"
    assert nodes.calls[-1] == ("storage", "image-extract", (
        "--vg", VG, "--lv", "img-3", "--inner", "/srv", "--partition", "2"))
    calls = len(nodes.calls)
    assert cli.main(["image", "extract", "3", "/a/../b", "--out", str(tmp_path / "e")],
                    cloud=cloud) == 1
    assert "'..' is not allowed" in capsys.readouterr().err
    assert cli.main(["image", "extract", "3", "/srv", "--out", str(out)], cloud=cloud) == 1
    assert "exists" in capsys.readouterr().err
    assert len(nodes.calls) == calls


def test_a_failed_overlay_deletes_the_new_image(cloud, oned, nodes, tmp_path, capsys):
    oned.put_xml(image_xml(3))

    def cloned(standin, image_id, name, ds_id, *_):
        new_id = max(standin.ids("image"))
        standin.edit("image", new_id, "SOURCE", f"{VG}/img-{new_id}")
        standin.edit("image", new_id, "STATE", 1)
    oned.after("one.image.clone", cloned)
    nodes.answers["image-overlay"] = DriverError("storage: the image's filesystem is full "
                                                 "after 3 MiB")
    source = tmp_path / "dir"
    source.mkdir()
    (source / "f").write_text("x")
    assert cli.main(["image", "overlay", "3", str(source), "--at", "/opt", "--as", "new"],
                    cloud=cloud) == 1
    err = capsys.readouterr().err
    assert "is full" in err and "the new image 4 was deleted" in err
    assert [i for i, _doc in oned.deleted_images] == [4]
    args = nodes.args_of("image-overlay")[0]
    assert args == ("--vg", VG, "--lv", "img-4", "--at", "/opt", "--partition", "0")

    assert cli.main(["image", "overlay", "3", str(tmp_path / "none"), "--at", "/opt",
                     "--as", "x"], cloud=cloud) == 1
    assert "no such directory" in capsys.readouterr().err
    assert 5 not in oned.ids("image")
