"""`tm-iscsi image extract` and `image overlay` on the real kernel, with real bytes: ext4 and xfs
on the whole disk and ext4 in a partition. The extract holds exactly what was written (content,
modes, numeric owners) and leaves nothing on the storage node; an overlay makes a new image in
oned whose filesystem is clean (e2fsck -fn, xfs_repair -n) and holds the files with their modes
and owners; the original image is unchanged (same sha); what cannot be done is one line and
leaves no image behind."""
import hashlib
import io
import json
import os
import tarfile
import xml.etree.ElementTree as ET

import pytest

from harness.cloud import IMAGE_VG, Cloud
from harness.documents import image_xml
from tests.lab.test_hooks import run_tool

POPULATE = """
mkdir -p "$1/data/sub" "$1/etc"
printf 'alpha\\n' > "$1/data/a.txt"; chmod 0640 "$1/data/a.txt"; chown 1234:5678 "$1/data/a.txt"
head -c 3000000 /dev/urandom > "$1/data/sub/blob"; chmod 0600 "$1/data/sub/blob"
ln -s /etc "$1/data/evil"
printf 'guest\\n' > "$1/etc/hostname"
"""


def _make_image(cloud, image_id, fs, mib, partitioned=False):
    lv = f"img-{image_id}"
    dev = f"/dev/{IMAGE_VG}/{lv}"
    cloud.lab.node_helper("storage", "lv-create", "--vg", IMAGE_VG, "--lv", lv, "--size-mib",
                          str(mib), "--tag", "tm_iscsi.kind=image", "--tag",
                          f"tm_iscsi.image={image_id}")
    target = dev
    if partitioned:
        cloud.lab.sh("storage", f"echo 'start=2048, type=83' | sfdisk -q {dev}")
        target = cloud.lab.sh("storage", f"losetup --find --show --offset {2048 * 512} {dev}"
                              ).strip()
    mkfs = "mkfs.ext4 -q -F" if fs == "ext4" else "mkfs.xfs -q -f"
    cloud.lab.sh("storage", f"{mkfs} {target} && mkdir -p /mnt/p && mount {target} /mnt/p && "
                 f"bash -c {_quoted(POPULATE)} x /mnt/p && umount /mnt/p" +
                 (f" && losetup -d {target}" if partitioned else ""))
    image = ET.fromstring(image_xml(image_id, source=f"{IMAGE_VG}/{lv}"))
    image.find("SIZE").text = str(mib)
    cloud.oned.put_xml(ET.tostring(image, encoding="unicode"))
    return dev


def _error_lines(result):
    """The failure's lines on stderr (progress lines aside): there must be one."""
    return [line for line in result.stderr.splitlines() if line.startswith("tm-iscsi:")]


def _quoted(text):
    return "'" + text.replace("'", "'\\''") + "'"


def _lv_sha(cloud, lv):
    return cloud.lab.sh("storage", f"sha256sum /dev/{IMAGE_VG}/{lv} | cut -d' ' -f1").strip()


@pytest.fixture
def cloud(lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        def cloned(standin, image_id, name, ds_id, *_rest):
            # oned runs the datastore's clone for the new image, then makes it READY.
            new_id = max(standin.ids("image"))
            origin = ET.fromstring(standin.xml("image", image_id))
            result = c.ds_action("clone", new_id, c.ds_xml(
                "03-image-clone", "01-ds-clone", ID=new_id, NAME=name,
                PATH=origin.findtext("SOURCE"), SIZE=origin.findtext("SIZE")))
            assert result.success, result.info
            standin.edit("image", new_id, "SOURCE", result.info.split()[0])
            standin.edit("image", new_id, "STATE", 1)

        def deleted(standin, image_id, *_rest):
            doc = dict(standin.deleted_images)[image_id]
            source = ET.fromstring(doc).findtext("SOURCE")
            result = c.ds_action("rm", image_id, c.ds_xml(
                "23-image-delete-ds-rm", "01-ds-rm", ID=image_id, SOURCE=source))
            assert result.success, result.info
        c.oned.after("one.image.clone", cloned)
        c.oned.after("one.image.delete", deleted)
        yield c


def test_extract_reads_a_directory_of_ext4_xfs_and_a_partition(cloud, tmp_path):
    images = {5: ("ext4", 64, False), 6: ("xfs", 320, False), 7: ("ext4", 64, True)}
    shas = {}
    for image_id, (fs, mib, partitioned) in images.items():
        _make_image(cloud, image_id, fs, mib, partitioned)
        shas[image_id] = _lv_sha(cloud, f"img-{image_id}")
    for image_id, (fs, _mib, partitioned) in images.items():
        out = tmp_path / f"{image_id}.tar.gz"
        args = ["image", "extract", image_id, "/data", "--out", out, "--json"]
        if partitioned:
            args += ["--partition", "1"]
        result = run_tool(cloud, "tm_iscsi.admin", *args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["bytes"] == os.path.getsize(out)
        with tarfile.open(out, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            assert tar.extractfile("data/a.txt").read() == b"alpha\n"
            blob_sha = hashlib.sha256(tar.extractfile("data/sub/blob").read()).hexdigest()
        assert set(members) >= {"data", "data/a.txt", "data/sub", "data/sub/blob", "data/evil"}
        a = members["data/a.txt"]
        assert (a.mode, a.uid, a.gid) == (0o640, 1234, 5678), fs
        assert members["data/evil"].issym() and members["data/evil"].linkname == "/etc"
        assert len(blob_sha) == 64
        assert _lv_sha(cloud, f"img-{image_id}") == shas[image_id], "the image changed"
    assert [lv for lv in cloud.lvs() if lv.endswith("-extract")] == []

    for args, message in (
            (["image", "extract", "5", "/nope", "--out", tmp_path / "x.tgz"],
             "the image has no /nope"),
            (["image", "extract", "5", "/data/evil/passwd", "--out", tmp_path / "x.tgz"],
             "/data/evil in the image is a symbolic link"),
            (["image", "extract", "7", "/data", "--out", tmp_path / "x.tgz"],
             "holds no filesystem"),
            (["image", "extract", "5", "/data", "--partition", "2", "--out",
              tmp_path / "x.tgz"], "has no partition table"),
            (["image", "extract", "5", "/a/../etc", "--out", tmp_path / "x.tgz"],
             "'..' is not allowed")):
        result = run_tool(cloud, "tm_iscsi.admin", *args)
        lines = _error_lines(result)
        assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr
        assert not (tmp_path / "x.tgz").exists()
    assert [lv for lv in cloud.lvs() if lv.endswith("-extract")] == []
    assert cloud.lab.sh("storage", "ls /run/tm_iscsi/fs 2>/dev/null | wc -l").strip() == "0"

    # What a helper killed half-way through an extract leaves (its snapshot, mounted through a
    # loop device): the re-run clears it and succeeds, and leaves nothing either.
    cloud.lab.sh("storage", f"lvcreate -q -s -kn -n img-7-extract {IMAGE_VG}/img-7 "
                            "--addtag tm_iscsi --addtag tm_iscsi.kind=extract && "
                            "mkdir -p /run/tm_iscsi/fs/stale && "
                            f"loop=$(losetup --find --show --offset {2048 * 512} "
                            f"/dev/{IMAGE_VG}/img-7-extract) && "
                            "mount -o ro $loop /run/tm_iscsi/fs/stale")
    result = run_tool(cloud, "tm_iscsi.admin", "image", "extract", "7", "/etc/hostname",
                      "--partition", "1", "--out", tmp_path / "h.tgz")
    assert result.returncode == 0, result.stderr
    with tarfile.open(tmp_path / "h.tgz", "r:gz") as tar:
        assert tar.extractfile("hostname").read() == b"guest\n"
    assert [lv for lv in cloud.lvs() if lv.endswith("-extract")] == []
    assert cloud.lab.sh("storage", "ls /run/tm_iscsi/fs | wc -l; losetup -a | wc -l").split() \
        == ["0", "0"]


def test_overlay_makes_a_clean_new_image_and_leaves_the_original(cloud, tmp_path):
    _make_image(cloud, 5, "ext4", 64)
    _make_image(cloud, 6, "xfs", 320)
    source = tmp_path / "app"
    (source / "conf").mkdir(parents=True)
    (source / "conf" / "app.ini").write_text("[app]\nport = 8080\n")
    os.chmod(source / "conf" / "app.ini", 0o604)
    (source / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(source / "run.sh", 0o755)
    archive = tmp_path / "extra.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("owned.txt")
        data = b"owned by 4321\n"
        info.size, info.uid, info.gid, info.mode = len(data), 4321, 8765, 0o640
        tar.addfile(info, io.BytesIO(data))

    for image_id, fs, src, name in ((5, "ext4", source, "app-ext4"), (6, "xfs", archive,
                                                                      "extra-xfs")):
        before = _lv_sha(cloud, f"img-{image_id}")
        result = run_tool(cloud, "tm_iscsi.admin", "image", "overlay", image_id, src,
                          "--at", "/opt/app", "--as", name, "--json")
        assert result.returncode == 0, result.stderr
        done = json.loads(result.stdout)
        assert done["fs"] == fs and done["from"] == image_id and done["files"] >= 1
        new_lv = f"img-{done['image']}"
        assert _lv_sha(cloud, f"img-{image_id}") == before, "the original image changed"
        dev = f"/dev/{IMAGE_VG}/{new_lv}"
        check = "e2fsck -fn" if fs == "ext4" else "xfs_repair -n"
        cloud.lab.sh("storage", f"{check} {dev} >/dev/null 2>&1")
        listing = cloud.lab.sh("storage", f"mkdir -p /mnt/c && mount -o ro{',nouuid' if fs == 'xfs' else ''} "
                                          f"{dev} /mnt/c && cd /mnt/c/opt/app && "
                                          "find . -type f -printf '%P %m %U %G\\n' | sort; "
                                          "cat /mnt/c/data/a.txt; cd /; umount /mnt/c")
        if fs == "ext4":
            assert "conf/app.ini 604" in listing and "run.sh 755" in listing, listing
        else:
            assert "owned.txt 640 4321 8765" in listing, listing
        assert "alpha" in listing           # the original's files are still there

    # Through a symbolic link of the image: refused, and the new image is gone again.
    images_before = cloud.oned.ids("image")
    lvs_before = sorted(cloud.lvs())
    result = run_tool(cloud, "tm_iscsi.admin", "image", "overlay", 5, source, "--at",
                      "/data/evil/x", "--as", "bad")
    lines = _error_lines(result)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "symbolic link" in lines[0] and "was deleted" in lines[0]
    assert cloud.oned.ids("image") == images_before
    assert sorted(cloud.lvs()) == lvs_before
    # An image VMs use (the origin of a clone) is refused by the storage node itself.
    refused = cloud.lab.node_helper("storage", "image-overlay", "--vg", IMAGE_VG, "--lv",
                                    "img-5", "--at", "/x", check=False, input=b"")
    assert refused.returncode != 0 and b"is the origin of" in refused.stderr
