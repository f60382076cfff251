"""LVM report parsing and argv building, against output captured from the lab's LVM 2.03.16."""
import pytest

from tm_iscsi.node import lvm
from tm_iscsi.node import run as run_mod
from tm_iscsi.node.errors import NodeError

MIB = 1024 * 1024

# `vgs --reportformat json --units b --nosuffix -o <vg fields>,<lv fields> vgt` in the lab.
VGS_JSON = """  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vgt", "vg_size":"25765609472", "vg_free":"12859736064", "vg_extent_size":"4194304", "lv_name":"tpool", "lv_size":"12880707584", "origin":"", "lv_tags":"", "lv_attr":"twi-aotz--", "pool_lv":"", "data_percent":"12.50", "metadata_percent":"10.71", "lv_metadata_size":"12582912", "segtype":"thin-pool"},
                  {"vg_name":"vgt", "vg_size":"25765609472", "vg_free":"12859736064", "vg_extent_size":"4194304", "lv_name":"a", "lv_size":"67108864", "origin":"", "lv_tags":"tm_iscsi,tm_iscsi.kind=image", "lv_attr":"Vwi-a-tz--", "pool_lv":"tpool", "data_percent":"0.00", "metadata_percent":"", "lv_metadata_size":"", "segtype":"thin"},
                  {"vg_name":"vgt", "vg_size":"25765609472", "vg_free":"12859736064", "vg_extent_size":"4194304", "lv_name":"b", "lv_size":"67108864", "origin":"a", "lv_tags":"x", "lv_attr":"Vwi---tz-k", "pool_lv":"tpool", "data_percent":"0.01", "metadata_percent":"", "lv_metadata_size":"", "segtype":"thin"}
              ]
          }
      ]
  }
"""
EMPTY_VG_JSON = '{"report": [{"vg": []}]}'
MISSING_STDERR = '  Volume group "nope" not found\n  Cannot process volume group nope\n'


def result(stdout="", stderr="", code=0, argv=("vgs",)):
    return run_mod.Result(list(argv), code, stdout, stderr, 0.1)


def test_parse_vg_report():
    rep = lvm.parse_vg_report("vgt", VGS_JSON)
    assert (rep.size_bytes, rep.free_bytes, rep.extent_bytes) == (25765609472, 12859736064,
                                                                  4 * MIB)
    assert sorted(rep.lvs) == ["a", "b", "tpool"]
    pool, a, b = rep.get("tpool"), rep.get("a"), rep.get("b")
    assert pool.is_thin_pool and not pool.is_thin and pool.metadata_bytes == 12582912
    assert a.tags == ["tm_iscsi", "tm_iscsi.kind=image"] and a.origin == "" and a.active
    assert a.path == "/dev/vgt/a" and a.pool == "tpool"
    assert b.origin == "a" and b.tags == ["x"] and not b.active
    # Nothing mapped -> can be written sparsely; 0.01% is not nothing.
    assert a.provisioned_nothing and not b.provisioned_nothing
    assert not pool.provisioned_nothing


def test_parse_empty_vg_has_no_lvs_and_unknown_sizes():
    rep = lvm.parse_vg_report("vgt", EMPTY_VG_JSON)
    assert rep.lvs == {} and rep.size_bytes is None
    assert rep.round_up(1) == 4 * MIB  # LVM's default extent when it is unknown


def test_round_up_to_extents():
    rep = lvm.parse_vg_report("vgt", VGS_JSON)
    assert rep.round_up(10 * MIB) == 12 * MIB
    assert rep.round_up(12 * MIB) == 12 * MIB
    assert rep.round_up(12 * MIB + 1) == 16 * MIB


def test_unparseable_report_is_a_clear_error():
    with pytest.raises(NodeError, match="cannot parse LVM report"):
        lvm.parse_vg_report("vgt", "Volume group vgt\n")


def test_report_missing_vg_names_it_and_the_fix(mocker):
    mocker.patch.object(run_mod, "run", return_value=result(stderr=MISSING_STDERR, code=5))
    with pytest.raises(NodeError) as err:
        lvm.report("nope")
    assert "nope" in str(err.value) and "vgcreate nope" in str(err.value)
    assert lvm.report("nope", missing_ok=True) is None


def test_report_other_failure_keeps_lvm_reason(mocker):
    mocker.patch.object(run_mod, "run", return_value=result(
        stderr="  /dev/ubdb: read failed: Input/output error\n", code=5))
    with pytest.raises(NodeError, match="read failed: Input/output error"):
        lvm.report("vgt")


def test_report_argv_is_one_call_with_bytes():
    argv = lvm.report_argv("vg-one-100")
    assert argv[:6] == ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix"]
    assert argv[-1] == "vg-one-100"
    assert "lv_tags" in argv[7] and "vg_extent_size" in argv[7]


def test_pool_status():
    status = lvm.pool_status(lvm.parse_vg_report("vgt", VGS_JSON), "tpool")
    assert status == {
        "vg": "vgt", "pool": "tpool",
        "data_total_bytes": 12880707584, "data_used_bytes": 1610088448, "data_percent": 12.5,
        "metadata_total_bytes": 12582912, "metadata_used_bytes": 1347630,
        "metadata_percent": 10.71, "vg_free_bytes": 12859736064}
    with pytest.raises(NodeError, match="pool-ensure"):
        lvm.pool_status(lvm.parse_vg_report("vgt", VGS_JSON), "other")
    with pytest.raises(NodeError, match="does not exist"):
        lvm.pool_status(lvm.parse_vg_report("vgt", VGS_JSON), "a")  # a thin LV, not a pool


def test_change_argv():
    assert lvm.create_thin_pool_argv("vg", "tpool", 90) == [
        "lvcreate", "-q", "-y", "--type", "thin-pool", "-l", "90%VG", "-n", "tpool", "vg"]
    assert lvm.create_thin_argv("vg", "tpool", "img-1", 64 * MIB, ["tm_iscsi", "k=v"]) == [
        "lvcreate", "-q", "-y", "--type", "thin", "--thinpool", "tpool", "-V",
        f"{64 * MIB}b", "-n", "img-1", "--addtag", "tm_iscsi", "--addtag", "k=v", "vg"]
    assert lvm.create_snapshot_argv("vg", "img-1", "vm-1-disk-0", ["t"]) == [
        "lvcreate", "-q", "-y", "--snapshot", "--setactivationskip", "n", "-n", "vm-1-disk-0",
        "--addtag", "t", "vg/img-1"]
    assert lvm.extend_argv("vg", "a", 8 * MIB) == ["lvextend", "-q", "-y", "-L", f"{8 * MIB}b",
                                                   "vg/a"]
    assert lvm.activate_argv("vg", "a") == ["lvchange", "-q", "-y", "-ay", "-K", "vg/a"]
    assert lvm.remove_argv("vg", "a") == ["lvremove", "-q", "-y", "vg/a"]
    assert lvm.remove_argv("vg", "a", "b") == ["lvremove", "-q", "-y", "vg/a", "vg/b"]


def test_a_thin_lv_made_in_an_active_pool_leaves_dmeventd_alone():
    assert lvm.create_thin_argv("vg", "tpool", "a", MIB, pool_active=True)[:4] == [
        "lvcreate", "-q", "-y", "--ignoremonitoring"]
    assert lvm.create_snapshot_argv("vg", "img-1", "b", pool_active=True)[:4] == [
        "lvcreate", "-q", "-y", "--ignoremonitoring"]


@pytest.mark.parametrize("pool_attr, ignored", [("twi-aotz--", True), ("twi---tz--", False)])
def test_clones_ignore_monitoring_only_while_their_pool_is_active(mocker, pool_attr, ignored):
    """A pool lvcreate itself activates must be registered with dmeventd as usual."""
    from tm_iscsi.node import lvops
    rep = lvm.VGReport("vg", 8 << 30, 1 << 30, 4 * MIB, {
        "tpool": lvm.LV(vg="vg", name="tpool", size_bytes=4 << 30, attr=pool_attr,
                        segtype="thin-pool", data_percent=1.0, metadata_percent=1.0),
        "img-1": lvm.LV(vg="vg", name="img-1", size_bytes=64 * MIB, attr="Vwi-a-tz--",
                        segtype="thin", pool="tpool", tags=["tm_iscsi"])})
    run = mocker.patch.object(run_mod, "run")
    lvops.ensure_snapshot(rep, "img-1", "vm-1-disk-0", ["tm_iscsi"], 90)
    lvops.ensure_thin(rep, "tpool", "vm-1-disk-0-map", 8, ["tm_iscsi"], 90)
    made = [c.args[0] for c in run.call_args_list if c.args[0][0] == "lvcreate"]
    assert len(made) == 2 and all(("--ignoremonitoring" in argv) is ignored for argv in made)


def test_change_commands_raise_with_context(mocker):
    run = mocker.patch.object(run_mod, "run", side_effect=NodeError("creating thin LV vg/a "
                                                                     "failed: no space"))
    with pytest.raises(NodeError, match="no space"):
        lvm.create_thin("vg", "tpool", "a", MIB)
    assert run.call_args.kwargs["what"] == "creating thin LV vg/a"


@pytest.mark.parametrize("tag,ok", [
    ("tm_iscsi", True), ("tm_iscsi.kind=clone", True), ("tm_iscsi.ds=100", True),
    ("a/b:c+d-e", True), ("", False), ("x y", False), ("a;b", False), ("a&b", False),
    ("a#b", False), ("$(id)", False), ("a" * 129, False)])
def test_valid_tag(tag, ok):
    assert lvm.valid_tag(tag) is ok


def test_an_active_lv_in_dev_says_the_vg_exists(tmp_path):
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    (sysfs / "block" / "dm-3" / "dm").mkdir(parents=True)
    (sysfs / "block" / "dm-3" / "dm" / "name").write_text("tmi--cache-rc--1--data\n")
    (dev / "tmi-cache").mkdir(parents=True)
    (dev / "dm-3").write_text("")
    assert not lvm.has_active_lv("tmi-cache", str(dev), str(sysfs))   # no link yet
    (dev / "tmi-cache" / "rc-1-data").symlink_to("../dm-3")
    assert lvm.has_active_lv("tmi-cache", str(dev), str(sysfs))
    # A folder of that name whose links are not LVs of that VG (/dev/cpu, a stale link) is not.
    (dev / "other").mkdir()
    (dev / "other" / "x").symlink_to("../dm-3")
    assert not lvm.has_active_lv("other", str(dev), str(sysfs))
    assert not lvm.has_active_lv("missing", str(dev), str(sysfs))
    assert lvm.dm_name("tmi-cache", "rc-1-data") == "tmi--cache-rc--1--data"
