"""Hostile input against every TM and DS action (harness/fuzz.py): thousands of seeded cases made
from what a real oned 7.4.0 sent. Each must be refused with exit != 0 and one plain stderr line,
no traceback, no protocol output, no node asked for input that is invalid on its face, and no
file left behind. TM_ISCSI_FUZZ_SEED picks another seed, TM_ISCSI_FUZZ_ROUNDS more of them."""
import json
import os
import shutil
import time

import pytest

from harness import fuzz
from harness.oned import OnedStandIn
from tm_iscsi import settings as settings_mod
from tm_iscsi.context import ActionContext
from tm_iscsi.one.client import OneClient

SEED = int(os.environ.get("TM_ISCSI_FUZZ_SEED", "20261201"))
ROUNDS = int(os.environ.get("TM_ISCSI_FUZZ_ROUNDS", "4"))
MIN_CALLS = 5000


class _RecordingOne(OneClient):
    """The real client against the stand-in, noting which datastores an action read."""

    def __init__(self, *args, read=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = read if read is not None else set()

    def datastore_info(self, ds_id):
        self.read.add(int(ds_id))
        return super().datastore_info(ds_id)


@pytest.fixture(scope="module")
def standin():
    with OnedStandIn() as oned:
        yield oned


def _context_factory(standin, settings, read=None):
    def make():
        calls = []
        one = _RecordingOne(standin.endpoint, standin.session, 10, read=read)
        ctx = ActionContext(settings=settings, one=one)
        ctx.node = lambda host: fuzz.NoNode(host, calls)
        return ctx, calls
    return make


def _files(path):
    found = set()
    for root, dirs, names in os.walk(path):
        found.update(os.path.join(root, n) for n in names + dirs)
    return found


def test_hostile_input_is_refused_in_one_line_before_any_node_call(standin, tmp_path,
                                                                      monkeypatch):
    export_dir = tmp_path / "export"
    monkeypatch.setattr("tm_iscsi.ds.actions.EXPORT_DIR", str(export_dir))
    monkeypatch.chdir(tmp_path)
    settings = settings_mod.load({"TM_ISCSI_FRONTEND": "frontend", "TM_ISCSI_CONF": "/none"})
    # Which datastores each unchanged call reads: their attributes are what it must check.
    read_by_action = {}
    for driver, action, argv, stdin, docs in fuzz.base_calls():
        read = set()
        case = fuzz.Case(driver, action, argv, stdin, docs, False, "unchanged")
        fuzz.run_case(case, standin, _context_factory(standin, settings, read))
        read_by_action[(driver, action)] = sorted(read)
    before = _files(tmp_path)
    started = time.monotonic()
    failures, figures = [], {"calls": 0, "tracebacks": 0, "node_calls": 0, "files_left": 0}
    for round_ in range(ROUNDS):
        for case in fuzz.cases(SEED + round_, read_by_action):
            outcome = fuzz.run_case(case, standin, _context_factory(standin, settings))
            figures["calls"] += 1
            figures["tracebacks"] += outcome.traceback
            problems = outcome.problems()
            if case.face_invalid and outcome.node_calls:
                figures["node_calls"] += 1
                problems.append(f"node calls {[c[1] for c in outcome.node_calls]}")
            left = _files(tmp_path) - before
            if left:
                figures["files_left"] += 1
                problems.append(f"left {sorted(left)[:3]}")
                before |= left
            if problems:
                failures.append(f"{case.describe()}: {'; '.join(problems)}: "
                                f"{outcome.plain_lines[:2]}")
    figures["seconds"] = round(time.monotonic() - started, 1)
    print("fuzz figures:", json.dumps(figures))
    report = os.environ.get("TM_ISCSI_FUZZ_REPORT")
    if report:
        with open(report, "w") as out:
            out.write("\n".join(failures) + "\n")
    assert figures["calls"] >= MIN_CALLS
    assert not failures, f"{len(failures)} of {figures['calls']} calls:\n" + "\n".join(
        failures[:60])


# -- the node helper's CLI ------------------------------------------------------------------------

def _node_recorders(monkeypatch, lock_dir):
    import contextlib
    import subprocess

    from tm_iscsi.node import lio, locks
    from tm_iscsi.node.errors import NodeError

    @contextlib.contextmanager
    def install(touched):
        def popen(argv, *args, **kwargs):
            touched.append(f"ran {argv[0] if argv else '?'}")
            raise NodeError(f"fuzz recorder: no program runs ({argv[0] if argv else '?'})")

        def rtslib():
            touched.append("LIO")
            raise NodeError("fuzz recorder: no LIO")

        with monkeypatch.context() as m:
            m.setattr(subprocess, "Popen", popen)
            m.setattr(lio, "_rtslib", rtslib)
            m.setattr(locks, "LOCK_DIR", str(lock_dir))
            yield
        if os.path.isdir(lock_dir) and os.listdir(lock_dir):
            touched.append(f"locks {sorted(os.listdir(lock_dir))}")
            for name in os.listdir(lock_dir):
                # A lock is its file and the folder its waiters queue in.
                path = os.path.join(lock_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    return install


def test_node_helper_refuses_hostile_input_before_it_runs_or_locks_anything(tmp_path,
                                                                            monkeypatch):
    from harness import fuzz_node
    monkeypatch.setenv("TM_ISCSI_NODE_CONF", str(tmp_path / "no-node.conf"))
    monkeypatch.setenv("TM_ISCSI_DATASTORES_DIR", "/var/lib/one/datastores")
    recorders = _node_recorders(monkeypatch, tmp_path / "locks")
    # The well-formed calls get through to a program, a lock or LIO: what the hostile ones
    # are refused before is real.
    for command, options in fuzz_node.BASES.items():
        outcome = fuzz_node.run_case(fuzz_node.NodeCase([command, *options], b"", "valid"),
                                     recorders)
        assert outcome.node_calls, (command, outcome.plain_lines)
    failures, figures = [], {"calls": 0, "tracebacks": 0, "touched": 0}
    for round_ in range(ROUNDS):
        for case in fuzz_node.cases(SEED + round_):
            outcome = fuzz_node.run_case(case, recorders)
            figures["calls"] += 1
            figures["tracebacks"] += outcome.traceback
            problems = outcome.problems()
            if outcome.node_calls:
                figures["touched"] += 1
                problems.append(f"touched {outcome.node_calls[:2]}")
            if problems:
                failures.append(f"{case.what}: {'; '.join(problems)}: {outcome.plain_lines[:2]}")
    print("node fuzz figures:", json.dumps(figures))
    report = os.environ.get("TM_ISCSI_FUZZ_REPORT")
    if report:
        with open(report + ".node", "w") as out:
            out.write("\n".join(failures) + "\n")
    assert figures["calls"] >= 1000
    assert not failures, f"{len(failures)} of {figures['calls']} calls:\n" + "\n".join(
        failures[:60])


# -- the programs themselves: remotes scripts, console scripts, the node helper ----------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT_SAMPLE = int(os.environ.get("TM_ISCSI_FUZZ_SCRIPTS", "160"))
CONSOLE_ACTIONS = ("clone", "ln", "mkimage", "mkswap", "mv", "delete")


def _ssh_recorder(directory):
    """An `ssh` first on PATH that notes its words and answers as an unreachable host does."""
    log = directory / "ssh.log"
    script = directory / "ssh"
    script.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n"
                      "echo 'ssh: connect to host: Connection refused' >&2\nexit 255\n")
    script.chmod(0o755)
    return log


def _program(case):
    """The argv of one case as oned (or an administrator) starts it."""
    import sys
    python = sys.executable
    if case.program == "tm" and case.action in CONSOLE_ACTIONS and hash(case.what) % 2:
        return [os.path.join(os.path.dirname(python), f"tm_{case.action}"), *case.argv]
    kind = "tm" if case.program == "tm" else "datastore"
    return [os.path.join(REPO, "remotes", kind, "iscsi_lvm", case.action), *case.argv]


def test_the_programs_refuse_hostile_input_in_one_line_without_a_network(standin, tmp_path):
    import random
    import subprocess
    import sys
    log = _ssh_recorder(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_ISCSI_")}
    env.update(standin.env(str(tmp_path)))
    env.update({"PATH": f"{tmp_path}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
                "TM_ISCSI_PYTHON": sys.executable, "TM_ISCSI_CONF": "/none",
                "TM_ISCSI_FRONTEND": "frontend", "PYTHONPATH": REPO, "LC_ALL": "C",
                "TM_ISCSI_EXPORT_DIR": str(tmp_path / "export"),
                "TM_ISCSI_LOCK_DIR": str(tmp_path / "locks"),
                "TM_ISCSI_NODE_CONF": str(tmp_path / "no-node.conf")})
    read_by_action = {}
    # A word with a NUL cannot be an argument of a program (exec ends it there): the
    # in-process part covers those.
    all_cases = [c for c in fuzz.cases(SEED, read_by_action)
                 if not any("\x00" in word for word in c.argv)]
    rng = random.Random(SEED)
    sample = rng.sample(all_cases, min(SCRIPT_SAMPLE, len(all_cases)))
    from harness import fuzz_node
    node_cases = rng.sample(list(fuzz_node.cases(SEED)), SCRIPT_SAMPLE // 4)
    # An unchanged call does reach ssh, so a hostile one that did would show in the log.
    driver, action, argv, stdin, docs = next(b for b in fuzz.base_calls() if b[1] == "delete")
    for text in docs.values():
        standin.put_xml(text)
    subprocess.run(_program(fuzz.Case(driver, action, argv, stdin, docs, what="unchanged")),
                   input=b"", capture_output=True, env=env, cwd=tmp_path, timeout=60)
    assert log.exists()
    failures = []
    for case in sample + node_cases:
        if isinstance(case, fuzz.Case):
            for text in case.documents.values():
                standin.put_xml(text)
            argv, what = _program(case), case.describe()
        else:
            argv, what = [os.path.join(os.path.dirname(sys.executable), "tm-iscsi-node"),
                          *case.argv], f"node {case.what}"
        if log.exists():
            log.unlink()
        result = subprocess.run(argv, input=case.stdin or b"", capture_output=True, env=env,
                                cwd=tmp_path, timeout=60)
        err = result.stderr.decode("utf-8", "replace")
        outcome = fuzz.Outcome(result.returncode, result.stdout.decode("utf-8", "replace"),
                               fuzz.plain(err), [])
        problems = outcome.problems()
        if "Traceback" in err and "traceback" not in problems:
            problems.append("traceback")
        if log.exists():
            problems.append(f"ssh {log.read_text().splitlines()[:1]}")
        if problems:
            failures.append(f"{what}: {'; '.join(problems)}: {outcome.plain_lines[:2]}")
    print("program fuzz figures:", json.dumps({"calls": len(sample) + len(node_cases),
                                               "failures": len(failures)}))
    assert not failures, "\n".join(failures[:40])
