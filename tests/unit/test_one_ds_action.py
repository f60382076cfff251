"""ds_action: decode every DS call oned 7.4.0 made (and the TM monitor), in both conventions."""

import base64
import re

import pytest

from harness import fixtures
from tm_iscsi.one import ds_action
from tm_iscsi.one.errors import BadDriverAction, BadXml, UsageError
from tm_iscsi.one.states import DatastoreType, ImageType

DS_CALLS = fixtures.calls("ds")
MONITOR_CALLS = [c for c in fixtures.calls("tm") if c.action == "monitor"]

_SUMMARY = re.compile(r"^(\d+) \S+ DS (\S+) (\d+)\s+\[stdin: (.*)\]$")


def _summaries(folder):
    """calls.txt: ``NN time DS action id [stdin: KEY=VALUE ... IMAGE: KEY=VALUE ...]``."""
    found = {}
    for line in (fixtures.folder(folder) / "calls.txt").read_text().splitlines():
        match = _SUMMARY.match(line)
        if not match:
            continue
        datastore_part, _, image_part = match.group(4).partition(" IMAGE: ")
        found[int(match.group(1))] = (
            dict(pair.split("=", 1) for pair in datastore_part.split()),
            dict(pair.split("=", 1) for pair in image_part.split()) if image_part else None,
        )
    return found


def test_fixtures_hold_the_ds_actions_of_the_readme():
    assert {c.action for c in DS_CALLS} == {
        "stat", "cp", "mkfs", "clone", "rm", "snap_revert", "snap_delete", "snap_flatten", "monitor"
    }


@pytest.mark.parametrize("call", DS_CALLS, ids=lambda c: c.id)
def test_stdin_convention_of_6_8_and_later(call):
    assert len(call.args) == 1
    stdin = call.read(".stdin", binary=True)
    decoded = ds_action.read_ds_action(call.action, call.args, stdin)
    assert decoded.action == call.action
    assert decoded.object_id == int(call.args[0])
    assert decoded.xml == call.read(".stdin.xml")

    datastore_summary, image_summary = _summaries(call.folder)[call.n]
    ds = decoded.datastore
    assert ds.id == int(datastore_summary["DS_ID"])
    assert ds.ds_mad == datastore_summary["DS_MAD"]
    assert ds.tm_mad == datastore_summary["TM_MAD"]
    assert ds.type == DatastoreType.IMAGE_DS
    assert ds.iscsi_host == "storage" and ds.vg_name == "vg-one-100"

    if call.action == "monitor":
        assert decoded.image is None
        assert decoded.object_id == ds.id
        return
    image = decoded.require_image()
    if image_summary is None:  # stat: only PATH and an empty SIZE
        assert call.action == "stat"
        assert image.path == "/data/images/debian12.raw" and image.size_mb is None
        return
    assert image.id == int(image_summary["ID"]) == decoded.object_id
    assert image.name == image_summary["NAME"]
    assert (image.path or "") == image_summary["PATH"]
    assert (image.source or "") == image_summary["SOURCE"]
    assert image.size_mb == int(image_summary["SIZE"])
    assert (image.format or "") == image_summary["FORMAT"]
    assert (image.fs or "") == image_summary["FS"]
    assert image.persistent is (image_summary["PERSISTENT"] == "1")
    assert image.type == ImageType(int(image_summary["TYPE"]))
    if "TARGET_SNAPSHOT" in image_summary:
        assert image.target_snapshot == int(image_summary["TARGET_SNAPSHOT"])


@pytest.mark.parametrize("call", DS_CALLS + MONITOR_CALLS, ids=lambda c: c.id)
def test_argv_convention_before_6_8_gives_the_same_action(call):
    stdin = call.read(".stdin", binary=True)
    new = ds_action.read_ds_action(call.action, call.args, stdin)
    old = ds_action.read_ds_action(call.action, [stdin.decode(), call.args[0]], stdin=b"ignored")
    assert (old.action, old.object_id, old.xml) == (new.action, new.object_id, new.xml)


@pytest.mark.parametrize("call", MONITOR_CALLS, ids=lambda c: c.id)
def test_system_datastore_monitor(call):
    decoded = ds_action.read_ds_argv(call.argv, call.read(".stdin", binary=True))
    assert decoded.object_id == 101
    assert decoded.datastore.is_system and decoded.datastore.ds_mad is None
    assert decoded.datastore.shared
    assert decoded.datastore_location == "/var/lib/one//datastores"
    assert decoded.monitor_vm_disks is ("<MONITOR_VM_DISKS>1</MONITOR_VM_DISKS>" in call.read(".stdin.xml"))
    assert decoded.image is None


def _one(folder, action):
    (call,) = [c for c in DS_CALLS if c.folder == folder and c.action == action]
    return ds_action.read_ds_argv(call.argv, call.read(".stdin", binary=True))


def test_what_each_action_reads():
    cp = _one("01-image-create-from-path", "cp").image
    assert (cp.path, cp.size_mb, cp.source, cp.format) == ("/data/images/debian12.raw", 64, None, None)
    mkfs = _one("02-image-create-datablock", "mkfs").image
    assert (mkfs.size_mb, mkfs.fs, mkfs.format, mkfs.persistent, mkfs.is_save_as) == (1024, "ext4", "raw", True, False)
    clone = _one("03-image-clone", "clone").image
    assert (clone.path, clone.cloning_id, clone.size_mb) == ("vg-one-100/img-0", 0, 64)
    save_as = _one("11-disk-saveas-snapshot-poweroff", "mkfs").image
    assert save_as.is_save_as and save_as.template_attr("SAVE_AS_HOT") == "YES"
    assert _one("19-image-snapshots-persistent", "snap_revert").image.require_target_snapshot() == 0
    assert _one("19-image-snapshots-persistent", "snap_delete").image.target_snapshot == 1
    flatten = _one("19-image-snapshots-persistent", "snap_flatten").image
    assert flatten.target_snapshot == 2 and [s.id for s in flatten.snapshots] == [0, 2]


def test_rm_of_each_deleted_image_names_its_source():
    removed = [c for c in DS_CALLS if c.action == "rm"]
    sources = [ds_action.read_ds_argv(c.argv, c.read(".stdin", binary=True)).image.require_source() for c in removed]
    assert sources == ["vg-one-100/img-2", "vg-one-100/img-3", "vg-one-100/img-4"]


def test_stdin_may_be_a_binary_file_and_may_end_in_a_newline(tmp_path):
    call = DS_CALLS[1]  # cp
    path = tmp_path / "stdin"
    path.write_bytes(call.read(".stdin", binary=True) + b"\n")
    with open(path, "rb") as handle:
        decoded = ds_action.read_ds_action("cp", ["0"], handle)
    assert decoded.image.name == "os-base"


# -------------------------------------------------------------------------------------------
# Refusals
# -------------------------------------------------------------------------------------------

CP = DS_CALLS[1]


def _b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "action,args,stdin,error,fragment",
    [
        ("cp", ["0"], b"", BadDriverAction, "cp: the driver action on stdin (oned 6.8+ sends it there"),
        ("cp", ["0"], b"  \n", BadDriverAction, "is empty"),
        ("cp", ["0"], b"not base64!", BadDriverAction, "is not base64"),
        ("cp", ["0"], _b64("<DS_DRIVER_ACTION_DATA>"), BadXml, "cp driver action is not valid XML"),
        ("cp", ["0"], _b64("<VM><ID>0</ID></VM>"), BadXml, "has root <VM>, expected <DS_DRIVER_ACTION_DATA>"),
        ("cp", ["0"], _b64("<DS_DRIVER_ACTION_DATA/>"), BadDriverAction, "cp driver action has no <DATASTORE>"),
        ("cp", ["0"], base64.b64encode(b"\xff\xfe"), BadDriverAction, "does not decode to UTF-8"),
        ("cp", ["7"], CP.read(".stdin", binary=True), BadDriverAction, "cp: argv names image 7 but the driver action describes image 0"),
        ("cp", ["x"], CP.read(".stdin", binary=True), UsageError, "cp: the object id must be a non-negative integer, got 'x'"),
        ("cp", ["-1"], CP.read(".stdin", binary=True), UsageError, "got '-1'"),
        ("cp", [], b"", UsageError, "got 0 arguments"),
        ("cp", ["a", "b", "c"], b"", UsageError, "got 3 arguments"),
        ("cp", ["%%%", "0"], b"", BadDriverAction, "cp: the driver action in argument 1 is not base64"),
        ("explode", ["0"], b"", UsageError, "unknown DS action 'explode'"),
        ("monitor", ["100"], MONITOR_CALLS[0].read(".stdin", binary=True), BadDriverAction,
         "monitor: argv names datastore 100 but the driver action describes datastore 101"),
        (
            "rm",
            ["2"],
            _b64("<DS_DRIVER_ACTION_DATA><DATASTORE><ID>100</ID></DATASTORE></DS_DRIVER_ACTION_DATA>"),
            BadDriverAction,
            "rm driver action for id 2 has no <IMAGE>",
        ),
    ],
)
def test_bad_driver_actions_are_one_line_errors(action, args, stdin, error, fragment):
    with pytest.raises(error) as err:
        ds_action.read_ds_action(action, args, stdin)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_read_ds_argv_needs_a_program():
    with pytest.raises(UsageError):
        ds_action.read_ds_argv([])
