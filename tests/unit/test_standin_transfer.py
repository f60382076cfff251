"""The one_tm / one_datastore stand-in, run against throwaway scripts in a temporary remotes dir.

Error texts are checked against what oned 7.4.0 really made of the injected failures in the
fixtures (vm.log lines, the VM and image ERROR attributes).
"""

import base64
import json
import os
import re
import sys
import textwrap

import pytest

from harness import fixtures
from harness.fixtures import REPO_ROOT
from harness.oned import OnedStandIn
from harness.transfer import (
    MIGRATE_ERROR_PREFIX,
    DatastoreManager,
    LogLine,
    TransferManager,
    map_execution,
    vm_error_attribute,
)

RECORDER = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    me = os.path.abspath(sys.argv[0])
    stdin = sys.stdin.read()
    with open(os.environ["RECORD_FILE"], "a") as out:
        seen = {{k: os.environ.get(k) for k in ("ONE_XMLRPC", "ONE_AUTH", "MARKER")}}
        out.write(json.dumps({{"script": me, "args": sys.argv[1:], "stdin": stdin, "env": seen}}) + "\\n")
    spec_file = os.path.join(os.environ["BEHAVIOUR_DIR"], me.replace("/", "_"))
    spec = json.load(open(spec_file)) if os.path.exists(spec_file) else {{}}
    time.sleep(spec.get("sleep", 0))
    sys.stdout.write(spec.get("stdout", ""))
    sys.stderr.write(spec.get("stderr", ""))
    sys.exit(spec.get("rc", 0))
    """
)


class Remotes:
    """A throwaway ``remotes`` tree whose scripts record how they were called."""

    def __init__(self, root):
        self.root = root / "remotes"
        self.record_file = root / "record.jsonl"
        self.behaviour_dir = root / "behaviour"
        self.behaviour_dir.mkdir()
        self.env = {"RECORD_FILE": str(self.record_file), "BEHAVIOUR_DIR": str(self.behaviour_dir)}

    def script(self, relative, stdout="", stderr="", rc=0, sleep=0, body=None):
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body if body is not None else RECORDER.format(python=sys.executable))
        path.chmod(0o755)
        spec = {"stdout": stdout, "stderr": stderr, "rc": rc, "sleep": sleep}
        (self.behaviour_dir / str(path.resolve()).replace("/", "_")).write_text(json.dumps(spec))
        return path

    def records(self):
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_text().splitlines()]

    def ran(self):
        """(path relative to remotes, args) of each run, in order."""
        return [(os.path.relpath(r["script"], str(self.root)), r["args"]) for r in self.records()]


@pytest.fixture
def remotes(tmp_path):
    return Remotes(tmp_path)


def _tm(remotes, **kwargs):
    return TransferManager(remotes.root, env=remotes.env, timeout=kwargs.pop("timeout", 30), **kwargs)


def _transfer(folder, name):
    return fixtures.folder(folder) / "transfer" / name


def _lines(path):
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


PROLOG = _transfer("04-vm-deploy", "vm0.transfer.0.prolog")
ALL_TM = ("clone", "ln", "mkimage", "mkswap", "mv", "delete", "mvds", "cpds", "context")


# -------------------------------------------------------------------------------------------
# Transfers
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder,path", fixtures.transfer_files(), ids=lambda v: getattr(v, "name", v))
def test_every_captured_transfer_runs_its_lines_in_order(remotes, folder, path):
    for action in ALL_TM + ("snap_create", "snap_revert", "snap_delete", "resize"):
        remotes.script("tm/iscsi_lvm/" + action)
    result = _tm(remotes).run_transfer_file(path)
    assert result.success and result.info == "-"
    expected = [("tm/iscsi_lvm/" + words[0].lower().split(".")[0], words[2:]) for words in _lines(path)]
    assert remotes.ran() == expected
    # ...and with the argv oned gave the real driver for those lines.
    captured = [(c.action, list(c.args)) for c in fixtures.calls("tm") if c.folder == folder]
    for action_path, args in expected:
        if (os.path.basename(action_path), args) not in captured:
            assert any(c.exit_code for c in fixtures.calls("tm") if c.folder == folder)


def test_first_failure_stops_the_transfer(remotes):
    remotes.script("tm/iscsi_lvm/clone")
    remotes.script("tm/iscsi_lvm/ln", stderr="ln: target portal unreachable\n", rc=3)
    remotes.script("tm/iscsi_lvm/mkimage")
    remotes.script("tm/iscsi_lvm/mkswap")
    result = _tm(remotes).run_transfer_file(PROLOG)
    assert not result.success
    assert result.info == "ln: target portal unreachable"
    assert [os.path.basename(p) for p, _ in remotes.ran()] == ["clone", "ln"]
    assert [r.exit_code for r in result.results] == [0, 3]


def test_stdout_of_tm_scripts_does_not_reach_oned(remotes):
    for action in ("clone", "ln", "mkimage", "mkswap"):
        remotes.script("tm/iscsi_lvm/" + action, stdout="chatter from %s\n" % action)
    result = _tm(remotes).run_transfer_file(PROLOG)
    assert result.success and result.info == "-"
    assert result.results[0].info == "chatter from clone\n"


@pytest.mark.parametrize(
    "folder,call_n,log_name",
    [
        ("20-recover-delete-prolog-failure", 1, "vm2.log"),
        ("21-injected-failure-mkimage-retry", 2, "vm3.log"),
    ],
)
def test_error_text_is_what_oned_made_of_the_captured_failure(remotes, folder, call_n, log_name):
    call = next(c for c in fixtures.calls("tm") if c.folder == folder and c.n == call_n)
    stderr = call.extra(".stderr").read_text()
    rc = int(call.extra(".rc").read_text())
    for action in ("clone", "ln", "mkimage", "mkswap"):
        remotes.script("tm/iscsi_lvm/" + action)
    remotes.script("tm/iscsi_lvm/" + call.action, stderr=stderr, rc=rc)
    prolog = next(p for f, p in fixtures.transfer_files() if f == folder and p.name.endswith(".prolog"))

    result = _tm(remotes).run_transfer_file(prolog)

    assert not result.success
    vm_log = (fixtures.folder(folder) / log_name).read_text()
    (logged,) = re.findall(r"\[TrM\]\[E\]: Error executing image transfer script: (.*)", vm_log)
    assert result.info == logged
    assert result.info.endswith("out of space(second plain stderr line) args: " + " ".join(call.args))
    assert result.results[-1].log == (
        LogLine("I", -1, "iscsi_lvm %s: starting (this INFO line is a log line for oned)" % call.action),
    )
    failure_xml = next(fixtures.folder(folder).glob("vm*.prolog-failure.xml")).read_text()
    error = re.search(r"<ERROR><!\[CDATA\[[^:]+:\d\d:\d\d \d{4}: (.*)\]\]></ERROR>", failure_xml).group(1)
    assert vm_error_attribute(result.info) == error


def test_failed_premigrate_gives_the_migrate_error_of_the_capture(remotes):
    call = next(c for c in fixtures.calls("tm") if c.folder.startswith("22-") and c.action == "premigrate" and c.exit_code)
    remotes.script("tm/iscsi_lvm/premigrate", stderr=call.extra(".stderr").read_text(), rc=1)
    stdin = call.read(".stdin", binary=True)

    result = _tm(remotes).run_action(["PREMIGRATE", "iscsi_lvm"] + list(call.args), stdin=stdin)

    assert not result.success
    assert remotes.records()[0]["stdin"] == stdin.decode()
    vm_log = (fixtures.folder(call.folder) / "vm4.log").read_text()
    assert "[VMM][E]: MIGRATE: %s\n" % result.info in vm_log
    after = (fixtures.folder(call.folder) / "vm4.after-premigrate-failure.xml").read_text()
    assert vm_error_attribute(result.info, MIGRATE_ERROR_PREFIX) + "]]>" in after


def test_suffixed_action_falls_back_to_the_plain_script(remotes):
    attach = _transfer("16-disk-hotplug-poweroff", "vm0.transfer.21.prolog_attach")
    remotes.script("tm/iscsi_lvm/clone")
    assert _tm(remotes).run_transfer_file(attach).success
    assert remotes.ran()[-1][0] == "tm/iscsi_lvm/clone"
    remotes.script("tm/iscsi_lvm/clone.iscsi_lvm")
    assert _tm(remotes).run_transfer_file(attach).success
    assert remotes.ran()[-1][0] == "tm/iscsi_lvm/clone.iscsi_lvm"


def test_fallback_cuts_at_the_last_dot(remotes):
    remotes.script("tm/iscsi_lvm/snap_create_live")
    result = _tm(remotes).run_action("SNAP_CREATE_LIVE.ssh iscsi_lvm h:/d/7/disk.0 0 7 100")
    assert result.success and remotes.ran() == [("tm/iscsi_lvm/snap_create_live", ["h:/d/7/disk.0", "0", "7", "100"])]


def test_missing_scripts_fail_the_transfer_like_one_tm(remotes):
    remotes.script("tm/iscsi_lvm/ln")
    tm = _tm(remotes)
    base = os.path.join(str(remotes.root), "tm", "iscsi_lvm")
    result = tm.run_action("CLONE iscsi_lvm a b 0 1")
    assert (result.success, result.info) == (False, "Driver path '%s/clone' does not exists" % base)
    result = tm.run_action("CLONE.ssh iscsi_lvm a b 0 1")
    assert result.info == "Driver path '%s/clone.ssh' nor '%s/clone' exists" % (base, base)
    assert remotes.records() == []


def test_drivers_outside_the_d_list_are_not_run(remotes):
    remotes.script("tm/iscsi_lvm/clone")
    remotes.script("tm/ssh/clone")
    tm = _tm(remotes, drivers=["ssh"])
    result = tm.run_transfer_file(PROLOG)
    assert (result.success, result.info) == (False, "Transfer Driver 'iscsi_lvm' not available")
    assert _tm(remotes).drivers == ("iscsi_lvm", "ssh")  # default: every dir under tm/


def test_comments_blank_lines_and_whitespace_runs(remotes):
    remotes.script("tm/iscsi_lvm/delete")
    text = "# epilog\n\n   \nDELETE  iscsi_lvm\thost1:/var/lib/one//datastores/101/0/disk.0   0 100  \n  # done\n"
    result = _tm(remotes).run_transfer_text(text)
    assert result.success and len(result.results) == 1
    assert remotes.ran() == [("tm/iscsi_lvm/delete", ["host1:/var/lib/one//datastores/101/0/disk.0", "0", "100"])]


def test_missing_transfer_file(remotes, tmp_path):
    result = _tm(remotes).run_transfer_file(tmp_path / "transfer.0.prolog")
    assert (result.success, result.info) == (False, "Transfer file '%s' does not exist" % (tmp_path / "transfer.0.prolog"))


def test_scripts_get_empty_stdin_and_the_callers_environment(remotes, monkeypatch):
    monkeypatch.setenv("MARKER", "from-the-test-process")
    remotes.script("tm/iscsi_lvm/clone")
    tm = TransferManager(remotes.root, env=dict(remotes.env, ONE_XMLRPC="http://127.0.0.1:1/RPC2"))
    assert tm.run_action("CLONE iscsi_lvm a b 0 1").success
    (record,) = remotes.records()
    assert record["stdin"] == ""
    assert record["env"]["MARKER"] == "from-the-test-process"
    assert record["env"]["ONE_XMLRPC"] == "http://127.0.0.1:1/RPC2"


def test_hung_script_is_killed(remotes):
    remotes.script("tm/iscsi_lvm/clone", sleep=30)
    result = _tm(remotes, timeout=1).run_action("CLONE iscsi_lvm a b 0 1")
    assert not result.success and result.exit_code is None
    assert "killed after 1s" in result.info


def test_unrunnable_script_fails_like_sh(remotes):
    path = remotes.script("tm/iscsi_lvm/clone")
    path.chmod(0o644)
    result = _tm(remotes).run_action("CLONE iscsi_lvm a b 0 1")
    assert (result.success, result.exit_code) == (False, 126)
    assert result.info.endswith("Permission denied")


# -------------------------------------------------------------------------------------------
# Result mapping (DriverExecHelper)
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exit_code,stdout,stderr,success,info,log",
    [
        (0, "vg/lv raw\n", "INFO: copying\n", True, "vg/lv raw\n", [("I", -1, "copying")]),
        (0, "", "", True, "-", []),
        (1, "ignored", "", False, "-", []),
        (1, "", "ERROR: 42 lvcreate failed\nthin pool full\n", False, "thin pool full", [("E", 42, "lvcreate failed")]),
        (1, "", "  WARN:   slow\n\tDEBUG: 7\n", False, "-", [("W", -1, "slow"), ("D", 7, "")]),
        (1, "", "INFO:no-space-after-colon\nnotice: x\n", False, "INFO:no-space-after-colonnotice: x", []),
        (1, "", "first  \n\n  second\r\n", False, "firstsecond", []),
        (2, "", "ERROR: a: b: c\n", False, "-", [("E", -1, "a: b: c")]),
    ],
)
def test_map_execution(exit_code, stdout, stderr, success, info, log):
    mapped = map_execution(exit_code, stdout, stderr)
    assert mapped == (success, info, tuple(LogLine(*entry) for entry in log))


def test_vm_error_attribute_truncation():
    assert vm_error_attribute("short") == "Error executing image transfer script: short"
    long_info = "x" * 200
    text = vm_error_attribute(long_info)
    assert text == ("Error executing image transfer script: " + long_info)[:100] + "... see more details in VM log"


# -------------------------------------------------------------------------------------------
# DS actions
# -------------------------------------------------------------------------------------------

DS_CALLS = fixtures.calls("ds")
MONITOR_CALLS = [c for c in fixtures.calls("tm") if c.action == "monitor"]


def _ds(remotes, **kwargs):
    return DatastoreManager(remotes.root, env=remotes.env, system_tms=("iscsi_lvm",), **kwargs)


@pytest.mark.parametrize("call", DS_CALLS + MONITOR_CALLS, ids=lambda c: c.id)
def test_ds_actions_get_the_id_and_the_base64_document_like_oned_sent(remotes, call):
    relative = ("tm/iscsi_lvm/monitor" if call.driver == "tm" else "datastore/iscsi_lvm/" + call.action)
    remotes.script(relative, stdout=call.stdout or "")
    stdin = call.read(".stdin")
    for given in (stdin, call.read(".stdin.xml")):  # base64 as oned sends it, or the document
        result = _ds(remotes).run(call.action, int(call.args[0]), given)
        assert result.success
        record = remotes.records()[-1]
        assert os.path.relpath(record["script"], str(remotes.root)) == relative
        assert record["args"] == list(call.args)
        assert record["stdin"] == stdin
        if call.action == "monitor":
            assert base64.b64decode(result.info).decode() == call.stdout
        else:
            assert result.info == (call.stdout or "-")


def test_ds_failure_text_is_what_oned_stored_on_the_image(remotes):
    call = next(c for c in DS_CALLS if c.exit_code)
    remotes.script("datastore/iscsi_lvm/cp", stderr=call.extra(".stderr").read_text(), rc=int(call.extra(".rc").read_text()))
    result = _ds(remotes).run("cp", 5, call.read(".stdin"))
    assert not result.success
    image_xml = (fixtures.folder(call.folder) / "image-5.error.xml").read_text()
    assert "Error copying image in the datastore: %s]]>" % result.info in image_xml
    assert result.log == (LogLine("I", -1, "iscsi_lvm ds cp: starting"),)


def test_ds_drivers_outside_the_lists_are_not_run(remotes):
    remotes.script("datastore/iscsi_lvm/cp")
    remotes.script("tm/iscsi_lvm/monitor")
    cp = DS_CALLS[1]
    result = _ds(remotes, ds_drivers=["fs"]).run("cp", 0, cp.read(".stdin"))
    assert (result.success, result.info) == (False, "Datastore driver 'iscsi_lvm' not available")
    monitor = MONITOR_CALLS[0]
    result = DatastoreManager(remotes.root, env=remotes.env).run("monitor", 101, monitor.read(".stdin"))
    assert (result.success, result.info) == (False, "System datastore driver 'iscsi_lvm' not available")
    assert remotes.records() == []


# -------------------------------------------------------------------------------------------
# A driver-shaped script using the product code against the oned stand-in
# -------------------------------------------------------------------------------------------

PROBE_DRIVER = textwrap.dedent(
    """\
    #!{python}
    import sys
    sys.path.insert(0, {repo!r})
    from tm_iscsi.one import client, tm_args
    from tm_iscsi.one.errors import OneError
    try:
        args = tm_args.parse_tm_argv(sys.argv)
        vm = client.vm_info(args.vmid)
    except OneError as err:
        sys.stderr.write("ERROR: %s\\n%s\\n" % (err, err))
        sys.exit(1)
    print("INFO: %s %s->%s disk=%s" % (vm.lcm_state.name, args.src.host, args.dst.host, args.disk_id), file=sys.stderr)
    """
)


def test_driver_script_reads_the_vm_from_the_stand_in_through_the_environment(remotes, tmp_path):
    stop = _transfer("06-undeploy-resume", "vm0.transfer.1.stop")
    remotes.script("tm/iscsi_lvm/mv", body=PROBE_DRIVER.format(python=sys.executable, repo=str(REPO_ROOT)))
    with OnedStandIn() as oned:
        oned.put_file(fixtures.folder("06-undeploy-resume") / "01-tm-mv.vm.xml")
        tm = TransferManager(remotes.root, env=oned.env(tmp_path))
        result = tm.run_transfer_file(stop)
        assert result.success, result.info
        messages = [r.log[0].message for r in result.results]
        assert messages == [
            "EPILOG_UNDEPLOY host1->frontend disk=0",
            "EPILOG_UNDEPLOY host1->frontend disk=1",
            "EPILOG_UNDEPLOY host1->frontend disk=2",
            "EPILOG_UNDEPLOY host1->frontend disk=3",
            "EPILOG_UNDEPLOY host1->frontend disk=None",
        ]
        assert [m for m, _ in oned.calls] == ["one.vm.info"] * 5

        oned.remove("vm", 0)
        result = tm.run_transfer_file(stop)
        assert not result.success
        assert result.info == "[one.vm.info] Error getting virtual machine [0]."
        assert len(result.results) == 1
