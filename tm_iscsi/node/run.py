"""The one way the node helper runs an external program.

Every command gets an argv list (never a shell string), a timeout (oned sets none, so a hung
`lvcreate` or `iscsiadm` would otherwise hang the VM's transfer forever), the C locale (so that
messages and numbers parse the same on every node), and its failure becomes one NodeError line
that says what was being done and what the program said.

subprocess rather than `sh`: the helper must behave the same with sh 1.x and 2.x, kill the whole
process group on a timeout, and stream progress from long copies; subprocess does all of that
with the standard library alone.
"""
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from . import deadline
from .errors import NodeError

DEFAULT_TIMEOUT = 120
# LVM warns about every inherited descriptor; the warnings would be the "last line" of errors.
_ENV_OVERRIDES = {"LC_ALL": "C", "LANG": "C", "LVM_SUPPRESS_FD_WARNINGS": "1"}
_SECRET_MASK = "******"


def info(message):
    """A progress line for the front-end's log (oned shows only the plain stderr lines)."""
    print(f"INFO: {message}", file=sys.stderr, flush=True)


class Result:
    __slots__ = ("argv", "returncode", "stdout", "stderr", "seconds")

    def __init__(self, argv, returncode, stdout, stderr, seconds):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds

    @property
    def ok(self):
        return self.returncode == 0


def _env():
    env = dict(os.environ)
    env.update(_ENV_OVERRIDES)
    return env


def _check_argv(argv):
    if not isinstance(argv, (list, tuple)) or not argv:
        raise TypeError("argv must be a non-empty list")
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, got {arg!r}")
        if "\0" in arg:
            raise NodeError(f"refusing to run {argv[0]}: an argument contains a NUL byte")
    return list(argv)


def _mask(text, secrets):
    for secret in secrets:
        if secret:
            text = text.replace(secret, _SECRET_MASK)
    return text


def last_line(text):
    """The line of a program's stderr an administrator needs: the last non-empty one, which is
    where LVM, iscsiadm and qemu-img put the reason."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe(argv, secrets=()):
    return _mask(" ".join(shlex.quote(a) for a in argv), secrets)


def failure(result, what=None, secrets=()):
    """The NodeError for a finished command that failed."""
    reason = last_line(result.stderr) or last_line(result.stdout) or "no message"
    doing = what or result.argv[0]
    return NodeError(_mask(f"{doing} failed: {reason} (exit {result.returncode} of "
                           f"`{describe(result.argv)}`)", secrets))


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _start(argv, what, secrets, **kwargs):
    try:
        # Own process group: a timeout kills the program and anything it started (qemu-img
        # threads, lvm's helpers), not just the first process.
        return subprocess.Popen(argv, env=_env(), start_new_session=True, **kwargs)
    except FileNotFoundError:
        raise NodeError(f"{what or argv[0]}: {argv[0]} is not installed on this node "
                        f"(install the package that provides it)")
    except PermissionError as err:
        raise NodeError(_mask(f"{what or argv[0]}: cannot execute {argv[0]}: {err}", secrets))


# A program started near the end of the call's budget still gets this long: killing it sooner
# would turn a slow step into a failed one for no gain.
MIN_TIMEOUT = 5


def _within_deadline(timeout, doing):
    """No program starts once the call's budget is spent, and none outlives it by much."""
    deadline.check(doing)
    bounded = deadline.bounded(timeout)
    return timeout if bounded >= timeout else max(min(MIN_TIMEOUT, timeout), int(bounded))


def run(argv, timeout=DEFAULT_TIMEOUT, input=None, ok=(0,), what=None, secrets=(),
        check=True):
    """Run argv to completion and return a Result with text stdout/stderr.

    `ok` lists the exit codes that count as success (e.g. iscsiadm's "already logged in").
    With check=False a failing exit code is returned instead of raised; timeouts and missing
    programs always raise. `secrets` are masked in every message (CHAP passwords)."""
    argv = _check_argv(argv)
    timeout = _within_deadline(timeout, what or argv[0])
    start = time.monotonic()
    proc = _start(argv, what, secrets, stdin=subprocess.PIPE if input is not None else
                  subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(
            input=input.encode() if isinstance(input, str) else input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise NodeError(_mask(f"{what or argv[0]} timed out after {timeout}s "
                              f"(`{describe(argv)}`); the node may be overloaded or a device "
                              "hung", secrets))
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    result = Result(argv, proc.returncode, out.decode(errors="replace"),
                    err.decode(errors="replace"), time.monotonic() - start)
    if check and result.returncode not in ok:
        raise failure(result, what, secrets)
    return result


def run_progress(argv, on_output, timeout=DEFAULT_TIMEOUT, what=None):
    """Run a long command (qemu-img convert -p) and hand each progress fragment of its stdout
    (split on CR or LF) to on_output(text). Raises NodeError on failure or timeout."""
    argv = _check_argv(argv)
    timeout = _within_deadline(timeout, what or argv[0])
    start = time.monotonic()
    # Here, not for every call: tempfile's imports cost a tenth of a second inside the lab's VMs.
    import tempfile
    # stderr to a file: a pipe nobody reads while we follow stdout could fill and block it.
    with tempfile.TemporaryFile() as errfile:
        proc = _start(argv, what, (), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=errfile)
        timed_out = []
        # A watchdog, because a hung program prints nothing and would block the read forever.
        watchdog = threading.Timer(timeout, lambda: (timed_out.append(1), _kill_group(proc)))
        watchdog.daemon = True
        watchdog.start()
        buf = b""
        try:
            while True:
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    break
                buf += chunk
                parts = buf.replace(b"\r", b"\n").split(b"\n")
                buf = parts.pop()
                for part in parts:
                    text = part.decode(errors="replace").strip()
                    if text:
                        on_output(text)
            proc.wait()
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            watchdog.cancel()
            proc.stdout.close()
        if timed_out:
            raise NodeError(f"{what or argv[0]} timed out after {timeout}s "
                            f"(`{describe(argv)}`)")
        errfile.seek(0)
        err = errfile.read().decode(errors="replace")
    result = Result(argv, proc.returncode, "", err, time.monotonic() - start)
    if result.returncode != 0:
        raise failure(result, what)
    return result


def one_line_errors(name, func):
    """Wrap a sub-command so that the failures of its environment (a device that vanished, a
    full disk, a configfs write LIO refused) end as one NodeError line, as the contract says,
    instead of a traceback. Programming errors still show their traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(args):
        try:
            return func(args)
        except NodeError:
            raise
        except OSError as err:
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            raise NodeError(f"{name}: {err.strerror or err}{where}")
        except Exception as err:  # noqa: BLE001 - only rtslib's own errors are converted
            if type(err).__module__.startswith("rtslib"):
                raise NodeError(f"{name}: LIO: {err}")
            raise
    return wrapper
