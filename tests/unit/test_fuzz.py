"""Hostile input against every TM and DS action (harness/fuzz.py): thousands of seeded cases made
from what a real oned 7.4.0 sent. Each must be refused with exit != 0 and one plain stderr line,
no traceback, no protocol output, no node asked for input that is invalid on its face, and no
file left behind. TM_ISCSI_FUZZ_SEED picks another seed, TM_ISCSI_FUZZ_ROUNDS more of them."""
import json
import os
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
            problems = []
            if outcome.traceback:
                figures["tracebacks"] += 1
                problems.append("traceback")
            if outcome.code == 0:
                problems.append("exit 0")
            if len(outcome.plain_lines) != 1:
                problems.append(f"{len(outcome.plain_lines)} plain stderr lines")
            if outcome.stdout.strip():
                problems.append("protocol output")
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
                os.unlink(os.path.join(lock_dir, name))
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
        assert outcome.touched, (command, outcome.plain_lines)
    failures, figures = [], {"calls": 0, "tracebacks": 0, "touched": 0}
    for round_ in range(ROUNDS):
        for case in fuzz_node.cases(SEED + round_):
            outcome = fuzz_node.run_case(case, recorders)
            figures["calls"] += 1
            problems = []
            if outcome.traceback:
                figures["tracebacks"] += 1
                problems.append("traceback")
            if outcome.code == 0:
                problems.append("exit 0")
            if len(outcome.plain_lines) != 1:
                problems.append(f"{len(outcome.plain_lines)} plain stderr lines")
            if outcome.stdout.strip():
                problems.append("output")
            if outcome.touched:
                figures["touched"] += 1
                problems.append(f"touched {outcome.touched[:2]}")
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
