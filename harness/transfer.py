"""one_tm and one_datastore for tests: run driver scripts the way oned's driver processes do.

TM (``one_tm``): a transfer file holds lines ``ACTION[.<tm_system>] <tm_name> args...``. Each line
is split like Ruby's ``line.split(' ')`` (runs of whitespace), the action lower-cased, and
``<remotes>/tm/<tm_name>/<action>`` run with the remaining words as arguments; when that file does
not exist and the action has a ``.suffix``, the part before the last dot is tried. Lines run in
order and the first failure ends the transfer. Comment (``#``) and blank lines are skipped.

DS (``one_datastore``): ``<remotes>/datastore/<DS_MAD>/<action> <id>`` with the base64 driver
action on stdin; ``monitor`` of a system datastore runs ``<remotes>/tm/<TM_MAD>/monitor`` and its
output travels base64-encoded.

Results are mapped as DriverExecHelper#get_info_from_execution does: exit 0 is success with stdout
as info; otherwise every stderr line not matching ``^(ERROR|INFO|WARN|DEBUG):\\s+(\\d+)?\\s*(.*)$``
is stripped and the lines are concatenated *with no separator* (that is what oned 7.4.0 did:
see the ERROR texts in the fixtures), "-" when nothing is left. Matching lines become log
messages. The environment of the caller is passed through, plus any overrides, so a test can
point ONE_XMLRPC / ONE_AUTH at the oned stand-in.

Deliberate difference: oned sets no timeout on these scripts; the stand-in does, so a hung
script fails a test instead of hanging it.
"""

import base64
import os
import re
import signal
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

# Ruby's \s and \d are ASCII-only; re.ASCII keeps Python's the same.
LOG_LINE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$", re.ASCII)
SEVERITY = {"ERROR": "E", "INFO": "I", "WARN": "W", "DEBUG": "D"}
_RUBY_SPACE = re.compile(r"[ \t\n\v\f\r]+")
_COMMENT = re.compile(r"^\s*#", re.ASCII)
_BLANK = re.compile(r"^\s*$", re.ASCII)

# one_datastore's -s default when none is configured
DEFAULT_SYSTEM_TMS = ("shared", "ssh", "ceph")

DEFAULT_TIMEOUT = 120

# oned's VM ERROR attribute keeps this much of "<prefix><info>" before its ellipsis
VM_ERROR_LIMIT = 100
VM_ERROR_TAIL = "... see more details in VM log"
TRANSFER_ERROR_PREFIX = "Error executing image transfer script: "
MIGRATE_ERROR_PREFIX = "MIGRATE: "


@dataclass(frozen=True)
class LogLine:
    """A stderr line oned turns into ``LOG <severity> <id> <message>``; id -1 when absent."""

    severity: str
    id: int
    message: str


@dataclass(frozen=True)
class ActionResult:
    """One script run as oned sees it."""

    success: bool
    info: str
    command: Tuple[str, ...] = ()
    exit_code: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    log: Tuple[LogLine, ...] = ()


@dataclass(frozen=True)
class TransferResult:
    """A whole transfer: the TRANSFER SUCCESS/FAILURE oned gets, and each line's run."""

    success: bool
    info: str
    results: Tuple[ActionResult, ...] = field(default_factory=tuple)


def map_execution(exit_code, stdout, stderr):
    """(success, info, log lines) of one execution, as DriverExecHelper computes them."""
    plain = []
    log = []
    for raw in stderr.splitlines():
        line = raw.strip()
        match = LOG_LINE.match(line)
        if not match:
            plain.append(line)
            continue
        log.append(LogLine(SEVERITY[match.group(1)], int(match.group(2)) if match.group(2) else -1, match.group(3).strip()))
    if exit_code == 0:
        info = stdout
    else:
        info = "".join(plain).replace("\n", " ").strip()
    return exit_code == 0, (info or "-"), tuple(log)


def vm_error_attribute(info, prefix=TRANSFER_ERROR_PREFIX):
    """The VM ERROR text oned stores for a failed action (without its leading timestamp)."""
    text = prefix + info
    if len(text) > VM_ERROR_LIMIT:
        return text[:VM_ERROR_LIMIT] + VM_ERROR_TAIL
    return text


def _environment(overrides):
    env = dict(os.environ)
    env.update(overrides or {})
    return env


def _execute(command, stdin, env, timeout):
    """Run like LocalCommand: own process group, stdin written then closed."""
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8")
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as err:
        # one_tm goes through sh, which reports an unrunnable file this way.
        return 126, "", "sh: 1: %s: %s\n" % (command[0], err.strerror)
    try:
        out, err = process.communicate(stdin or b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace") + (
            "stand-in: killed after %ss\n" % timeout
        )
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _run(command, stdin, env, timeout):
    exit_code, stdout, stderr = _execute(command, stdin, env, timeout)
    success, info, log = map_execution(exit_code, stdout, stderr)
    return ActionResult(success, info, tuple(command), exit_code, stdout, stderr, log)


class TransferManager:
    """one_tm over ``<remotes_dir>/tm``.

    ``drivers`` is one_tm's ``-d`` list; None allows every directory under ``tm/`` (one_tm's
    default).
    """

    def __init__(self, remotes_dir, drivers=None, env=None, timeout=DEFAULT_TIMEOUT):
        self.tm_dir = Path(remotes_dir) / "tm"
        if drivers is None:
            drivers = sorted(p.name for p in self.tm_dir.iterdir() if p.is_dir()) if self.tm_dir.is_dir() else []
        self.drivers = tuple(drivers)
        self.env = dict(env or {})
        self.timeout = timeout

    @staticmethod
    def split_line(line):
        """Ruby ``line.split(' ')``: whitespace runs separate, edges ignored."""
        stripped = line.strip(" \t\n\v\f\r")
        return _RUBY_SPACE.split(stripped) if stripped else []

    def run_action(self, command, stdin=None):
        """do_transfer_action: ``command`` is a transfer line or its split words."""
        words = self.split_line(command) if isinstance(command, str) else list(command)
        action = words[0].lower()
        tm_name = words[1] if len(words) > 1 else ""
        args = words[2:]
        if tm_name not in self.drivers:
            return ActionResult(False, "Transfer Driver '%s' not available" % tm_name)
        path = os.path.join(str(self.tm_dir), tm_name, action)
        if not os.path.exists(path):
            head, dot, _tail = action.rpartition(".")
            if not dot:
                return ActionResult(False, "Driver path '%s' does not exists" % path)
            shortened = os.path.join(str(self.tm_dir), tm_name, head)
            if not os.path.exists(shortened):
                return ActionResult(False, "Driver path '%s' nor '%s' exists" % (path, shortened))
            path = shortened
        return _run([path] + args, stdin, _environment(self.env), self.timeout)

    def run_transfer_file(self, path):
        """action_transfer: ``TRANSFER <vmid> <file>``."""
        path = Path(path)
        if not path.is_file():
            return TransferResult(False, "Transfer file '%s' does not exist" % path)
        return self.run_transfer_text(path.read_text(encoding="utf-8"))

    def run_transfer_text(self, text):
        """The lines of a transfer file, in order, up to the first failure."""
        results = []
        for line in text.splitlines():
            if _COMMENT.match(line) or _BLANK.match(line):
                continue
            result = self.run_action(line)
            results.append(result)
            if not result.success:
                return TransferResult(False, result.info, tuple(results))
        return TransferResult(True, "-", tuple(results))


class DatastoreManager:
    """one_datastore over ``<remotes_dir>/datastore`` (and ``tm/<TM_MAD>/monitor``).

    ``ds_drivers`` is the ``-d`` list (None: every directory under ``datastore/``),
    ``system_tms`` the ``-s`` list.
    """

    def __init__(self, remotes_dir, ds_drivers=None, system_tms=DEFAULT_SYSTEM_TMS, env=None, timeout=DEFAULT_TIMEOUT):
        self.remotes_dir = Path(remotes_dir)
        ds_dir = self.remotes_dir / "datastore"
        if ds_drivers is None:
            ds_drivers = sorted(p.name for p in ds_dir.iterdir() if p.is_dir()) if ds_dir.is_dir() else []
        self.ds_drivers = tuple(ds_drivers)
        self.system_tms = tuple(system_tms)
        self.env = dict(env or {})
        self.timeout = timeout

    def run(self, action, object_id, driver_action):
        """Run a DS action; ``driver_action`` is the XML document or its base64 (as oned sends)."""
        if isinstance(driver_action, bytes):
            driver_action = driver_action.decode("ascii")
        if driver_action.lstrip().startswith("<"):
            xml = driver_action
            payload = base64.b64encode(driver_action.encode("utf-8")).decode("ascii")
        else:
            payload = driver_action
            xml = base64.b64decode(payload).decode("utf-8")
        root = ET.fromstring(xml)
        ds_mad = root.findtext("DATASTORE/DS_MAD") or ""
        system_tm = ""
        if root.findtext("DATASTORE/TYPE") == "1":
            system_tm = root.findtext("DATASTORE/TM_MAD") or ""

        action = action.lower()
        if action == "monitor" and system_tm:
            if system_tm not in self.system_tms:
                return ActionResult(False, "System datastore driver '%s' not available" % system_tm)
            script = self.remotes_dir / "tm" / system_tm / "monitor"
        else:
            if ds_mad not in self.ds_drivers:
                return ActionResult(False, "Datastore driver '%s' not available" % ds_mad)
            script = self.remotes_dir / "datastore" / ds_mad / action

        result = _run([str(script), str(object_id)], payload, _environment(self.env), self.timeout)
        if action == "monitor":
            encoded = base64.b64encode(result.info.encode("utf-8")).decode("ascii")
            return ActionResult(result.success, encoded, result.command, result.exit_code, result.stdout, result.stderr, result.log)
        return result
