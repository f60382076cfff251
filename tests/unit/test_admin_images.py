"""`tm-iscsi image import` (through oned's one.image.allocate, never around it) and `image
export` (lv-read from the storage node, raw / qcow2 / tar.gz, with a progress bar)."""
import io
import json
import shutil
import tarfile
import xml.etree.ElementTree as ET

import pytest

from tm_iscsi.admin import cli, images
from tm_iscsi.admin.progress import Progress
from tm_iscsi.errors import DriverError

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    VG, cloud, image_xml, nodes, oned, runner)

DATA = bytes(range(256)) * 4096   # 1 MiB


def _ready_after_allocate(oned):
    """Play oned: the DS cp ends and the image becomes READY with its SOURCE."""
    def cp_done(standin, template, ds_id, *rest):
        image_id = standin.allocated_images[-1][0]

        def ready(root):
            root.find("STATE").text = "1"
            root.find("SOURCE").text = f"{VG}/img-{image_id}"
        standin.edit_with("image", image_id, ready)
    oned.after("one.image.allocate", cp_done)


def test_import_a_file_goes_through_oned_with_its_absolute_path(cloud, oned, tmp_path,
                                                                monkeypatch, capsys):
    (tmp_path / "debian-12.qcow2").write_bytes(b"QFI\xfb")
    monkeypatch.chdir(tmp_path)
    _ready_after_allocate(oned)
    assert cli.main(["image", "import", "debian-12.qcow2", "--datastore", "100"],
                    cloud=cloud) == 0
    assert capsys.readouterr().out == ("image 0 (debian-12) in datastore 100: READY, "
                                       f"{VG}/img-0\n")
    (image_id, template, ds_id), = oned.allocated_images
    assert ds_id == 100 and template == (f'NAME = "debian-12"\nPATH = "{tmp_path}/debian-12.'
                                         'qcow2"\nTYPE = "OS"\n')


def test_import_a_url_json_no_wait(cloud, oned, capsys):
    assert cli.main(["image", "import", "https://example.org/x.raw", "--datastore", "100",
                     "--name", "x y", "--type", "DATABLOCK", "--persistent", "--no-wait",
                     "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"id": 0, "name": "x y", "datastore": 100,
                    "path": "https://example.org/x.raw", "state": "LOCKED", "source": None}
    assert 'PERSISTENT = "YES"' in oned.allocated_images[0][1]


def test_import_reports_oneds_error(cloud, oned, tmp_path, capsys):
    (tmp_path / "a.raw").write_bytes(b"x")

    def failed(standin, *params):
        def error(root):
            root.find("STATE").text = "5"
            ET.SubElement(root.find("TEMPLATE"), "ERROR").text = "cp: no space left"
        standin.edit_with("image", 0, error)
    oned.after("one.image.allocate", failed)
    assert cli.main(["image", "import", str(tmp_path / "a.raw"), "--datastore", "100"],
                    cloud=cloud) == 1
    assert capsys.readouterr().err == ("tm-iscsi: oned could not import image 0: cp: no space "
                                       "left; remove it with oneimage delete 0\n")


@pytest.mark.parametrize("argv, fragment", [
    (["--datastore", "101"], "is a system datastore"),
    (["--datastore", "5"], "datastore 5 is not an iscsi_lvm datastore"),
])
def test_import_refuses_a_datastore_that_cannot_take_it(cloud, oned, tmp_path, argv, fragment,
                                                        capsys):
    (tmp_path / "a.raw").write_bytes(b"x")
    assert cli.main(["image", "import", str(tmp_path / "a.raw"), *argv], cloud=cloud) == 1
    assert fragment in capsys.readouterr().err
    assert oned.allocated_images == []


def test_import_refuses_a_missing_file_and_an_unreachable_oned(cloud, oned, tmp_path, capsys):
    assert cli.main(["image", "import", str(tmp_path / "nope.raw"), "--datastore", "100"],
                    cloud=cloud) == 1
    assert "no such file on the front-end" in capsys.readouterr().err
    (tmp_path / "a.raw").write_bytes(b"x")
    oned.stop()
    assert cli.main(["image", "import", str(tmp_path / "a.raw"), "--datastore", "100"],
                    cloud=cloud) == 1
    err = capsys.readouterr().err
    assert err.startswith("tm-iscsi: oned is not reachable (cannot reach oned at")
    assert "an image is imported through oned" in err and err.count("\n") == 1


@pytest.fixture
def image7(oned, nodes):
    oned.put_xml(image_xml(7, name="web"))
    nodes.answers["lv-info"] = {"exists": True, "size_bytes": len(DATA)}
    nodes.streams["lv-read"] = DATA
    return oned


def test_export_raw_streams_lv_read_into_the_file(cloud, image7, nodes, tmp_path, capsys):
    dest = tmp_path / "web.raw"
    assert cli.main(["image", "export", "7", str(dest)], cloud=cloud) == 0
    assert dest.read_bytes() == DATA
    assert nodes.calls[-1] == ("storage", "lv-read", ("--vg", VG, "--lv", "img-7"))
    out, err = capsys.readouterr()
    assert out == f"image 7 ({VG}/img-7, 1048576 bytes) -> {dest} (raw, 1048576 bytes)\n"
    assert f"reading {VG}/img-7 [" in err and "100% 1/1 MiB" in err
    assert list(tmp_path.iterdir()) == [dest]   # no partial file left


def test_export_tar_gz_holds_the_raw_image(cloud, image7, tmp_path, capsys):
    dest = tmp_path / "web.tar.gz"
    assert cli.main(["image", "export", "7", str(dest), "--format", "tar.gz", "--json"],
                    cloud=cloud) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "tar.gz"
    with tarfile.open(dest) as tar:
        assert tar.getnames() == ["web.raw"]
        assert tar.extractfile("web.raw").read() == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web.tar.gz"]


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img is not installed")
def test_export_qcow2_with_qemu_img(cloud, image7, tmp_path):
    import subprocess
    dest = tmp_path / "web.qcow2"
    assert cli.main(["image", "export", "7", str(dest), "--format", "qcow2"], cloud=cloud) == 0
    raw = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(dest), str(raw)],
                   check=True)
    assert raw.read_bytes() == DATA


def test_export_qcow2_without_qemu_img_is_refused_before_reading(cloud, image7, nodes,
                                                                 tmp_path):
    with pytest.raises(DriverError, match="qcow2 export needs qemu-img on the front-end"):
        images.export_image(cloud, 7, str(tmp_path / "x.qcow2"), "qcow2", which=lambda t: None)
    assert nodes.calls == []


def test_export_refuses_to_overwrite_and_a_short_read(cloud, image7, nodes, tmp_path, capsys):
    dest = tmp_path / "web.raw"
    dest.write_bytes(b"keep")
    assert cli.main(["image", "export", "7", str(dest)], cloud=cloud) == 1
    assert "exists; remove it or add --force" in capsys.readouterr().err
    nodes.streams["lv-read"] = DATA[:1000]
    assert cli.main(["image", "export", "7", str(dest), "--force"], cloud=cloud) == 1
    assert "read 1000 of the 1048576 bytes" in capsys.readouterr().err
    assert dest.read_bytes() == b"keep" and sorted(tmp_path.iterdir()) == [dest]


def test_export_of_an_image_whose_lv_is_gone(cloud, image7, nodes, tmp_path, capsys):
    nodes.answers["lv-info"] = {"exists": False}
    assert cli.main(["image", "export", "7", str(tmp_path / "x")], cloud=cloud) == 1
    assert "its LV vg-one-100/img-7 does not exist on storage" in capsys.readouterr().err


def test_progress_on_a_terminal_and_in_a_log():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    clock = iter(range(100)).__next__
    tty = Tty()
    bar = Progress("reading", 100 << 20, tty, clock=lambda: float(clock()))
    bar.update(50 << 20)
    bar.finish(100 << 20)
    assert tty.getvalue().startswith("\rreading [############.............]  50% 50/100 MiB")
    assert tty.getvalue().endswith("100% 100/100 MiB 33.3 MiB/s\n")
    log = io.StringIO()
    bar = Progress("reading", 100, log, clock=lambda: 1.0)
    for done in range(0, 101, 5):
        bar.update(done)
    bar.finish(100)
    assert len(log.getvalue().splitlines()) == 10


def test_default_names():
    assert images.default_name("/x/debian-12.qcow2") == "debian-12"
    assert images.default_name("https://h/p/alpine.img?x=1") == "alpine"
    assert images.default_name("/x/data.tar.gz") == "data"


def test_import_shows_how_much_the_datastore_cp_has_written(cloud, oned, nodes, tmp_path):
    """While oned's cp runs (image LOCKED), the import reports the MiB the new image LV holds on
    the storage node, instead of waiting silently."""
    source = tmp_path / "big.raw"
    source.write_bytes(DATA * 8)          # 8 MiB
    polls = []

    def lv_info(host, args):
        polls.append(host)
        done = len(polls) >= 3
        if done:
            _ready_after_allocate_now(oned)
        return {"exists": True, "size_bytes": 8 << 20, "data_percent": 50.0 if not done else 100.0}

    def _ready_after_allocate_now(standin):
        image_id = standin.allocated_images[-1][0]

        def ready(root):
            root.find("STATE").text = "1"
            root.find("SOURCE").text = f"{VG}/img-{image_id}"
        standin.edit_with("image", image_id, ready)

    nodes.answers["lv-info"] = lv_info
    err = io.StringIO()
    result = images.import_image(cloud, str(source), 100, sleep=lambda s: None, out=err)
    assert result["state"] == "READY"
    lines = err.getvalue().splitlines()
    assert any("50%" in l and "4/8 MiB" in l for l in lines), lines
    assert lines[-1].startswith("importing big (image 0) into ") and "100%" in lines[-1]
    assert set(polls) == {"storage"}


def test_an_image_oned_does_not_have_is_said_in_plain_words(cloud, oned, capsys, tmp_path):
    assert cli.main(["image", "export", "77", str(tmp_path / "x.raw")], cloud=cloud) == 1
    err = capsys.readouterr().err
    assert err == "tm-iscsi: oned has no image 77 (oneimage list shows what there is)\n"


def test_import_refuses_a_file_under_the_datastore_s_restricted_dirs(cloud, oned, capsys):
    """oned's own fs datastore refuses it; tm_iscsi's cp does too, and the import says so
    before oned makes an image (one_auth is oneadmin's credential)."""
    assert cli.main(["image", "import", "/etc/passwd", "--datastore", "100"], cloud=cloud) == 1
    err = capsys.readouterr().err
    assert "RESTRICTED_DIRS" in err and "SAFE_DIRS" in err
    assert oned.allocated_images == []
