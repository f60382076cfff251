"""tm_args against every TM argv oned 7.4.0 emitted, checked against the VM/DS XML of the call."""

import base64

import pytest

from harness import fixtures
from tm_iscsi.one import tm_args
from tm_iscsi.one.errors import UsageError
from tm_iscsi.one.objects import Datastore, VirtualMachine
from tm_iscsi.one.states import LcmState

TM_CALLS = fixtures.calls("tm")
FRONTEND = "frontend"  # HOSTNAME in the capture's oned.conf

EXPECTED_TYPES = {
    "clone": tm_args.ImageToDiskArgs,
    "ln": tm_args.ImageToDiskArgs,
    "mkswap": tm_args.MkswapArgs,
    "mkimage": tm_args.MkimageArgs,
    "context": tm_args.ContextArgs,
    "delete": tm_args.DeleteArgs,
    "mvds": tm_args.MvdsArgs,
    "cpds": tm_args.CpdsArgs,
    "mv": tm_args.MvArgs,
    "premigrate": tm_args.MigrateArgs,
    "postmigrate": tm_args.MigrateArgs,
    "failmigrate": tm_args.MigrateArgs,
    "snap_create": tm_args.SnapshotArgs,
    "snap_delete": tm_args.SnapshotArgs,
    "snap_revert": tm_args.SnapshotArgs,
    "resize": tm_args.ResizeArgs,
    "monitor": tm_args.MonitorArgs,
}


def test_fixtures_hold_every_tm_action_the_readme_lists():
    seen = {call.action for call in TM_CALLS}
    assert seen == set(EXPECTED_TYPES)
    assert len(TM_CALLS) >= 100


def _vm(call):
    return VirtualMachine.from_xml(call.read(".vm.xml"))


def _sys_dir(vm):
    history = vm.current_history
    return "/var/lib/one/datastores/%d/%d" % (history.ds_id, vm.id)


def _marked_disk(vm, predicate):
    marked = [disk for disk in vm.disks if predicate(disk)]
    assert len(marked) == 1, "exactly one disk should carry the mark"
    return marked[0]


@pytest.mark.parametrize("call", TM_CALLS, ids=lambda c: c.id)
def test_captured_argv_parses_to_the_right_record(call):
    args = tm_args.parse_tm_argv(call.argv)
    assert type(args) is EXPECTED_TYPES[call.action]
    assert args.action == call.action
    assert args.system_tm is None
    if call.action == "monitor":
        assert args.dsid == int(call.args[0])
        return
    assert args.vmid == int(call.args[-2])
    assert args.dsid == int(call.args[-1])
    # The XML captured during the call describes the same objects.
    assert _vm(call).id == args.vmid
    assert Datastore.from_xml(call.read(".ds.xml")).id == args.dsid


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action in ("clone", "ln")], ids=lambda c: c.id)
def test_clone_and_ln_name_the_image_and_the_disk(call):
    args = tm_args.parse_tm_argv(call.argv)
    vm = _vm(call)
    disk = vm.disk(args.disk_id)
    assert args.image_host == FRONTEND
    assert args.source == disk.source
    assert disk.datastore_id == args.dsid
    assert disk.clone is (call.action == "clone")
    assert args.disk.host == vm.current_history.hostname
    assert args.disk.vm_dir == _sys_dir(vm)
    assert "//" not in args.disk.path


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action in ("mkimage", "mkswap")], ids=lambda c: c.id)
def test_volatile_disks_get_size_and_format_from_the_vm(call):
    args = tm_args.parse_tm_argv(call.argv)
    vm = _vm(call)
    disk = vm.disk(args.disk_id)
    assert disk.is_volatile
    assert args.size_mb == disk.size_mb
    assert disk.type == ("fs" if call.action == "mkimage" else "swap")
    if call.action == "mkimage":
        assert args.format == disk.format == "raw"
        assert disk.fs in ("ext4", "xfs")  # only the XML says which
    assert args.dsid == vm.current_history.ds_id == disk.datastore_id
    assert args.disk.vm_dir == _sys_dir(vm)


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action == "context"], ids=lambda c: c.id)
def test_context_targets_the_context_disk(call):
    args = tm_args.parse_tm_argv(call.argv)
    vm = _vm(call)
    assert args.context_script == "/var/lib/one/vms/%d/context.sh" % vm.id
    assert args.files == ()
    assert args.disk_id == vm.context_disk_id
    assert vm.find_disk(args.disk_id) is None  # the context disk is not a DISK
    assert args.disk.host == vm.current_history.hostname
    assert args.dsid == vm.current_history.ds_id


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action == "delete"], ids=lambda c: c.id)
def test_delete_is_a_disk_of_the_vm_or_its_directory(call):
    args = tm_args.parse_tm_argv(call.argv)
    vm = _vm(call)
    assert args.target.vm_dir == _sys_dir(vm)
    # An undeployed VM's epilog runs on the front-end while its last history still names the host.
    assert args.target.host in (vm.current_history.hostname, FRONTEND)
    if args.is_disk:
        disk = vm.disk(args.disk_id)
        assert disk.datastore_id == args.dsid
    else:
        assert args.dsid == vm.current_history.ds_id


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action == "mvds"], ids=lambda c: c.id)
def test_mvds_returns_a_persistent_disk_to_its_source(call):
    args = tm_args.parse_tm_argv(call.argv)
    disk = _vm(call).disk(args.disk_id)
    assert disk.persistent and disk.save
    assert args.source == disk.source
    assert disk.datastore_id == args.dsid


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action == "cpds"], ids=lambda c: c.id)
def test_cpds_copies_into_the_save_as_image(call):
    args = tm_args.parse_tm_argv(call.argv)
    vm = _vm(call)
    disk = _marked_disk(vm, lambda d: d.save_as_active)
    assert args.disk_id == disk.disk_id
    assert args.source == disk.save_as_source
    assert args.snap_id == disk.save_as_snapshot_id
    assert args.from_live_disk is (vm.lcm_state == LcmState.HOTPLUG_SAVEAS)


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action == "mv"], ids=lambda c: c.id)
def test_mv_direction_follows_the_lcm_state(call):
    args = tm_args.parse_tm_argv(call.argv)
    vm = _vm(call)
    here = vm.current_history.hostname
    expected = {
        LcmState.EPILOG_STOP: (here, FRONTEND),
        LcmState.EPILOG_UNDEPLOY: (here, FRONTEND),
        LcmState.PROLOG_RESUME: (FRONTEND, here),
        LcmState.PROLOG_UNDEPLOY: (FRONTEND, here),
    }
    if vm.lcm_state == LcmState.PROLOG_MIGRATE:
        expected[LcmState.PROLOG_MIGRATE] = (vm.previous_history.hostname, here)
    assert (args.src.host, args.dst.host) == expected[vm.lcm_state]
    assert args.src.path == args.dst.path == args.src.vm_dir + ("/disk.%d" % args.disk_id if args.is_disk else "")
    if args.is_disk:
        assert vm.disk(args.disk_id).datastore_id == args.dsid
    else:
        assert args.dsid == vm.current_history.ds_id


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action.startswith("snap_")], ids=lambda c: c.id)
def test_disk_snapshot_calls_match_the_marked_disk(call):
    args = tm_args.parse_tm_argv(call.argv)
    disk = _marked_disk(_vm(call), lambda d: d.snapshot_active)
    assert args.disk_id == disk.disk_id
    assert args.snap_id == disk.snapshot_id
    assert not args.is_live


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action == "resize"], ids=lambda c: c.id)
def test_resize_carries_the_new_size_of_the_marked_disk(call):
    args = tm_args.parse_tm_argv(call.argv)
    disk = _marked_disk(_vm(call), lambda d: d.resizing)
    assert args.disk_id == disk.disk_id
    assert args.size_mb == disk.size_mb > disk.size_prev_mb


@pytest.mark.parametrize("call", [c for c in TM_CALLS if c.action.endswith("migrate")], ids=lambda c: c.id)
def test_migrate_hooks_name_source_and_destination(call):
    args = tm_args.parse_tm_argv(call.argv)
    vm = _vm(call)
    assert (args.src_host, args.dst_host) == (vm.previous_history.hostname, vm.current_history.hostname)
    assert args.vm_dir == _sys_dir(vm)
    assert not args.is_fan_out
    # stdin: base64 VM XML with only the newest history record, naming the destination.
    stdin_vm = VirtualMachine.from_xml(base64.b64decode(call.read(".stdin", binary=True)))
    assert stdin_vm.id == args.vmid
    assert len(stdin_vm.history) == 1
    assert stdin_vm.current_history.hostname == args.dst_host


def test_failmigrate_gets_the_argv_of_the_premigrate_it_undoes():
    failures = [c for c in TM_CALLS if c.folder.startswith("22-")]
    pairs = [(a, b) for a, b in zip(failures, failures[1:]) if a.action == "premigrate" and b.action == "failmigrate"]
    assert len(pairs) == 2
    for pre, fail in pairs:
        assert pre.args == fail.args
        pre_args, fail_args = tm_args.parse_tm_argv(pre.argv), tm_args.parse_tm_argv(fail.argv)
        assert (pre_args.src_host, pre_args.dst_host) == (fail_args.src_host, fail_args.dst_host) == ("host1", "host2")


# -------------------------------------------------------------------------------------------
# Transfer files and action names
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder,path", fixtures.transfer_files(), ids=lambda v: getattr(v, "name", v))
def test_transfer_file_lines_parse_and_match_the_calls_that_ran(folder, path):
    lines = tm_args.parse_transfer_text(path.read_text())
    assert lines
    captured = [c for c in TM_CALLS if c.folder == folder]
    for line in lines:
        assert line.tm_name == "iscsi_lvm"
        parsed = tm_args.parse_tm_args(line.action_field, line.args)
        assert parsed.action == line.action
        ran = [c for c in captured if c.action == line.action and c.args == line.args]
        if not ran:
            # Only lines after a failed one never ran (recover --delete replaced the prolog).
            assert any(c.exit_code != 0 for c in captured)
            break
        if ran[0].exit_code != 0:
            break


def test_hotplug_while_powered_off_writes_suffixed_actions():
    path = fixtures.folder("16-disk-hotplug-poweroff") / "transfer" / "vm0.transfer.21.prolog_attach"
    (line,) = tm_args.parse_transfer_text(path.read_text())
    assert line.action_field == "CLONE.iscsi_lvm"
    assert (line.action, line.system_tm) == ("clone", "iscsi_lvm")
    assert line.script_candidates == ("clone.iscsi_lvm", "clone")
    args = tm_args.parse_tm_args(line.action_field, line.args)
    assert args.system_tm == "iscsi_lvm" and args.disk_id == 5


@pytest.mark.parametrize(
    "name,expected",
    [
        ("clone", ("clone", None)),
        ("CLONE", ("clone", None)),
        ("DELETE.iscsi_lvm", ("delete", "iscsi_lvm")),
        ("snap_create_live.ssh", ("snap_create_live", "ssh")),
        ("SNAP_CREATE_LIVE.ssh", ("snap_create_live", "ssh")),
    ],
)
def test_split_action_name(name, expected):
    assert tm_args.split_action_name(name) == expected


@pytest.mark.parametrize(
    "field,expected",
    [("MV", ("mv",)), ("CLONE.ssh", ("clone.ssh", "clone")), ("snap_create_live.a.b", ("snap_create_live.a.b", "snap_create_live.a"))],
)
def test_script_candidates_cut_at_the_last_dot(field, expected):
    assert tm_args.script_candidates(field) == expected


@pytest.mark.parametrize(
    "program,expected",
    [
        ("/var/lib/one/remotes/tm/iscsi_lvm/clone", ("clone", None)),
        ("/var/lib/one/remotes/tm/iscsi_lvm/snap_create_live.ssh", ("snap_create_live", "ssh")),
        ("/usr/bin/tm_clone", ("clone", None)),
        ("tm_mkswap", ("mkswap", None)),
    ],
)
def test_action_from_program(program, expected):
    assert tm_args.action_from_program(program) == expected


@pytest.mark.parametrize("name", ["frobnicate", "clone.", "clone.ss h", "clone.$(id)", ""])
def test_unknown_or_malformed_action_names_are_refused(name):
    with pytest.raises(UsageError) as err:
        tm_args.split_action_name(name)
    assert "\n" not in str(err.value)


def test_transfer_line_splitting_is_awk_style():
    line = tm_args.parse_transfer_line("  MV\tiscsi_lvm  a:/x/0   b:/x/0 0  101 \n")
    assert line == tm_args.TransferLine("MV", "iscsi_lvm", ("a:/x/0", "b:/x/0", "0", "101"))
    assert tm_args.parse_transfer_line("   # comment") is None
    assert tm_args.parse_transfer_line(" \t ") is None
    with pytest.raises(UsageError):
        tm_args.parse_transfer_line("CLONE")


# -------------------------------------------------------------------------------------------
# Forms the captures do not show
# -------------------------------------------------------------------------------------------

SYS = "host1:/var/lib/one//datastores/101/7"


def test_context_with_files_and_targets():
    args = tm_args.parse_tm_args(
        "context",
        [
            "/var/lib/one/vms/7/context.sh",
            "/var/lib/one//datastores/2/5b1e9c:'init.sh'",
            "/srv/files/key.pub:authorized",
            "/srv/files/plain",
            "https://files.example/one/boot.sh",
            "/var/lib/one/vms/7/token.txt",
            SYS + "/disk.3",
            "7",
            "101",
        ],
    )
    assert args.files == (
        tm_args.ContextFile("/var/lib/one/datastores/2/5b1e9c", "init.sh"),
        tm_args.ContextFile("/srv/files/key.pub", "authorized"),
        tm_args.ContextFile("/srv/files/plain"),
        tm_args.ContextFile("https://files.example/one/boot.sh"),
        tm_args.ContextFile("/var/lib/one/vms/7/token.txt"),
    )
    assert args.disk_id == 3


def test_migrate_other_adds_the_calling_system_tm():
    args = tm_args.parse_tm_args("premigrate", ["host1", "host2", "/var/lib/one//datastores/101/7", "7", "101", "ssh"])
    assert args.caller_tm == "ssh" and args.is_fan_out
    assert args.vm_dir == "/var/lib/one/datastores/101/7"


def test_snap_create_live_and_cpds_of_the_live_disk():
    live = tm_args.parse_tm_args("snap_create_live", [SYS + "/disk.0", "3", "7", "100"])
    assert live.is_live and live.snap_id == 3
    cpds = tm_args.parse_tm_args("cpds", [SYS + "/disk.0", "vg-one-100/img-9", "-1", "7", "100"])
    assert cpds.from_live_disk


def test_backup_actions():
    args = tm_args.parse_tm_args("prebackup_live", [SYS, "0:2:3", "one-7", "-", "7", "101"])
    assert args.disk_ids == (0, 2, 3)
    assert args.deploy_id == "one-7"
    assert args.backup_job_id is None
    assert args.is_live
    assert args.vm_dir == tm_args.HostPath("host1", "/var/lib/one/datastores/101/7")
    job = tm_args.parse_tm_args("postbackup", [SYS, "1", "one-7", "12", "7", "101"])
    assert job.backup_job_id == 12 and not job.is_live


def test_restore():
    args = tm_args.parse_tm_args("restore", [SYS, "7", "42", "-1", "-1"])
    assert (args.vmid, args.backup_image_id, args.increment_id, args.disk_id) == (7, 42, -1, -1)
    assert args.all_disks


def test_monitor_accepts_the_pre_6_8_form():
    payload = base64.b64encode(b"<DS_DRIVER_ACTION_DATA/>").decode()
    assert tm_args.parse_tm_args("monitor", ["101"]) == tm_args.MonitorArgs("monitor", 101)
    assert tm_args.parse_tm_args("monitor", [payload, "101"]).legacy_payload == payload


def test_host_path_properties():
    path = tm_args.HostPath("host1", "/var/lib/one/datastores/101/7/disk.12")
    assert path.disk_id == 12 and path.is_disk
    assert path.vm_dir == "/var/lib/one/datastores/101/7"
    assert path.system_ds_id == 101
    assert str(path) == "host1:/var/lib/one/datastores/101/7/disk.12"
    assert tm_args.HostPath("h", "/a/101/7").disk_id is None


def test_records_are_frozen():
    args = tm_args.parse_tm_args("delete", [SYS, "7", "101"])
    with pytest.raises(Exception):
        args.vmid = 8


# -------------------------------------------------------------------------------------------
# Refusals: one line, naming the action, the argument and the expectation
# -------------------------------------------------------------------------------------------

DISK = SYS + "/disk.0"
BAD_ARGV = [
    ("clone", ["frontend:vg/img-0", DISK, "7"], "expected 4 arguments, got 3"),
    ("clone", ["frontend:vg/img-0", DISK, "7", "100", "extra"], "expected 4 arguments, got 5"),
    ("clone", ["vg/img-0", DISK, "7", "100"], "must be fe_host:SOURCE"),
    ("clone", ["frontend:vg/img-0;reboot", DISK, "7", "100"], "the character ';'"),
    ("clone", ["frontend:vg/$(id)", DISK, "7", "100"], "the character '$'"),
    ("clone", ["frontend:vg/`id`", DISK, "7", "100"], "the character '`'"),
    ("clone", ["frontend:vg/img 0", DISK, "7", "100"], "whitespace"),
    ("clone", ["frontend:vg/img-0", DISK + "\n", "7", "100"], "line break"),
    ("clone", ["frontend:vg/img-0", DISK + "\x00", "7", "100"], "control character"),
    ("clone", ["frontend:vg/img-0", "host1|x:/var/lib/one/datastores/101/7/disk.0", "7", "100"], "the character '|'"),
    ("clone", ["frontend:vg/img-0", "-oProxyCommand=x:/a/7/disk.0", "7", "100"], "the character '='"),
    ("clone", ["frontend:vg/img-0", "-host:/a/7/disk.0", "7", "100"], "not a host name"),
    ("clone", ["frontend:../etc/img", DISK, "7", "100"], "contains '..'"),
    ("clone", ["frontend:vg/img-0", SYS, "7", "100"], "must end in /disk.N"),
    ("clone", ["frontend:vg/img-0", "host1:var/lib/7/disk.0", "7", "100"], "not an absolute path"),
    ("clone", ["frontend:vg/img-0", "host1/var/lib/7/disk.0", "7", "100"], "must be host:/path"),
    ("clone", ["frontend:vg/img-0", DISK, "8", "100"], "is not the directory of VM 8"),
    ("clone", ["frontend:vg/img-0", DISK, "seven", "100"], "vmid) must be a non-negative integer, got 'seven'"),
    ("clone", ["frontend:vg/img-0", DISK, "7", "-100"], "dsid) must be a non-negative integer"),
    ("clone", ["frontend:vg/img-0", DISK, "7", "+100"], "dsid) must be a non-negative integer"),
    ("clone", ["frontend:vg/img-0", DISK, "7", ""], "dsid) must be a non-negative integer"),
    ("ln", ["frontend:", DISK, "7", "100"], "image SOURCE is empty"),
    ("mkswap", ["0", DISK, "7", "101"], "size_mb) must be an integer >= 1, got '0'"),
    ("mkswap", ["1e3", DISK, "7", "101"], "size_mb) must be an integer >= 1"),
    ("mkimage", ["512", "raw;x", DISK, "7", "101"], "the character ';'"),
    ("mkimage", ["512", DISK, "7", "101"], "expected 5 arguments, got 4"),
    ("context", ["/var/lib/one/vms/7/context.sh", DISK, "7"], "expected at least 4 arguments, got 3"),
    ("context", ["/var/lib/one/vms/7/context.sh", "/f:a b", DISK, "7", "101"], "whitespace"),
    ("context", ["/var/lib/one/vms/7/context.sh", "/f:a/b", DISK, "7", "101"], "the character '/'"),
    ("delete", [SYS, "7"], "expected 3 arguments, got 2"),
    ("delete", ["host1:/var/lib/one/datastores/101/8", "7", "101"], "is not the directory of VM 7"),
    ("mvds", [DISK, "vg-one-100/img-1&", "7", "100"], "the character '&'"),
    ("cpds", [DISK, "vg-one-100/img-3", "-2", "7", "100"], "snap_id) must be an integer >= -1"),
    ("mv", [DISK, "frontend:/var/lib/one/datastores/101/7/disk.1", "7", "100"], "not the same disk"),
    ("mv", [DISK, "frontend:/var/lib/one/datastores/101/7", "7", "100"], "not the same disk"),
    ("mv", [SYS, "host2:/var/lib/one/datastores/101/9", "7", "101"], "is not the directory of VM 7"),
    ("premigrate", ["host1", "host2", "/var/lib/one/datastores/101/7", "7"], "expected 5 or 6 arguments"),
    ("premigrate", ["host1", "host2>x", "/var/lib/one/datastores/101/7", "7", "101"], "the character '>'"),
    ("premigrate", ["host1", "host2", "/var/lib/one/datastores/101/7", "7", "101", "s*h"], "the character '*'"),
    ("postmigrate", ["host1", "host2", "host2:/var/lib/one/datastores/101/7", "7", "101"], "the character ':'"),
    ("snap_create", [DISK, "-1", "7", "100"], "snap_id) must be a non-negative integer"),
    ("snap_revert", [SYS, "0", "7", "100"], "must end in /disk.N"),
    ("resize", [DISK, "big", "7", "100"], "size_mb) must be an integer >= 1"),
    ("prebackup", [SYS, "0:x", "one-7", "-", "7", "101"], "must be N[:N...]"),
    ("prebackup", [DISK, "0", "one-7", "-", "7", "101"], "must be the VM directory"),
    ("postbackup_live", [SYS, "0", "one 7", "-", "7", "101"], "whitespace"),
    ("restore", [SYS, "7", "42", "-1"], "expected 5 arguments, got 4"),
    ("monitor", [], "expected 1 or 2 arguments, got 0"),
    ("monitor", ["PD94bWw+;", "101"], "the character ';'"),
]


@pytest.mark.parametrize("action,argv,fragment", BAD_ARGV, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_argv_is_one_clear_line(action, argv, fragment):
    with pytest.raises(UsageError) as err:
        tm_args.parse_tm_args(action, argv)
    message = str(err.value)
    assert fragment in message
    assert message.startswith(action + ": ")
    assert "(usage: %s " % action in message
    assert "\n" not in message and "\x00" not in message


def test_empty_argv_and_unknown_program():
    with pytest.raises(UsageError):
        tm_args.parse_tm_argv([])
    with pytest.raises(UsageError) as err:
        tm_args.parse_tm_argv(["/var/lib/one/remotes/tm/iscsi_lvm/explode", "x"])
    assert "unknown TM action 'explode'" in str(err.value)


def test_hostile_values_are_escaped_in_messages():
    with pytest.raises(UsageError) as err:
        tm_args.parse_tm_args("delete", ["host1:/var/lib/one/datastores/101/7\n\x1b[31mred", "7", "101"])
    message = str(err.value)
    assert "\\n" in message and "\\x1b" in message
    assert "\x1b" not in message
