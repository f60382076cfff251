"""Calling the node helper on a storage node or a host, over SSH, with a timeout on every call.

The node helper's contract (tm_iscsi/node): one JSON object on stdout, one line on stderr and a
non-zero exit on failure, `INFO:` progress lines on stderr."""
import io
import json
import os
import random
import shlex
import subprocess
import threading
import time

from . import log, naming
from .errors import DriverError


# What ssh gets beyond the budget the node works within: connecting, and the answer's way back.
ANSWER_GRACE = 15


class NodeUnreachable(DriverError):
    pass


class _FaultPlan:
    """Fault injection for convergence tests: TM_ISCSI_FAULT=before:N (or after:N) makes the
    N-th node call of this process fail before it is sent (or after it has done its work), as a
    front-end crash or a lost connection would. Unset in production."""

    def __init__(self, spec):
        self.when, self.at = None, 0
        if spec:
            when, _, at = spec.partition(":")
            if when in ("before", "after") and at.isdigit():
                self.when, self.at = when, int(at)
        self.count = 0

    def check(self, when, host, command, index=None):
        """`index`: the call's number, for a call others were sent during (Node.begin)."""
        if self.when == when and (self.count if index is None else index) == self.at:
            raise DriverError(f"{host}: injected fault {when} call {self.at} ({command})")

    def next(self):
        self.count += 1


_FAULTS = _FaultPlan(os.environ.get("TM_ISCSI_FAULT"))


def _trace(host, command, seconds, begun_before=None):
    """TM_ISCSI_TRACE=FILE appends one JSON line per node call (host, command, seconds): what
    the benchmarks and the demo read to tell where an action's time goes. A call begun early
    (Node.begin) counts from its last arguments; `begun_before` says how long it ran before."""
    path = os.environ.get("TM_ISCSI_TRACE")
    if path:
        row = {"host": host, "command": command, "seconds": round(seconds, 3)}
        if begun_before is not None:
            row["begun_before"] = round(begun_before, 3)
        with open(path, "a") as trace:
            trace.write(json.dumps(row) + "\n")


def _plain_file(stream):
    """A local file whose descriptor ssh may read directly. Anything else (an HTTP response
    holds the start of the body in Python's buffer, not in its socket) goes through a pipe."""
    raw = getattr(stream, "raw", None)
    if not isinstance(stream, io.BufferedReader) or not isinstance(raw, io.FileIO):
        return False
    try:
        # Python may have read ahead (a seek inside its buffer moves no descriptor): put the
        # descriptor where the reader is.
        os.lseek(stream.fileno(), stream.tell(), os.SEEK_SET)
    except OSError:
        return False
    return True


class _Feeder:
    """Copies a Python file object into a pipe the child reads, in a thread."""
    CHUNK = 1 << 20

    def __init__(self, stream):
        self.stream = stream
        self.read_end, self._write_end = os.pipe()
        self.error = None
        self._thread = threading.Thread(target=self._copy, daemon=True)

    def start(self):
        self._thread.start()

    def _copy(self):
        try:
            with open(self._write_end, "wb", closefd=True) as sink:
                while True:
                    chunk = self.stream.read(self.CHUNK)
                    if not chunk:
                        break
                    sink.write(chunk)
        except BrokenPipeError:
            pass   # the child stopped reading: its exit code says why
        except OSError as err:
            self.error = str(err)

    def finish(self):
        # The child has ended: our copy of the read end goes, so a feeder still writing gets
        # EPIPE instead of blocking on a full pipe.
        os.close(self.read_end)
        self._thread.join(timeout=30)


# What ssh itself prints when it cannot get a session to the host (OpenSSH's own messages).
_SSH_FAILURES = ("ssh: ", "Connection closed by", "Connection reset by", "Connection timed out",
                 "Could not resolve", "No route to host", "Connection refused",
                 "Host key verification failed", "Permission denied", "kex_exchange_identification",
                 "Network is unreachable", "Broken pipe", "banner exchange")


# What ssh prints when sshd turns a connection away before any authentication (MaxStartups,
# when many connect at once; an sshd restarting): nothing ran on the node, so it is tried again.
_TURNED_AWAY = ("kex_exchange_identification", "banner exchange")
CONNECT_ATTEMPTS = 5


def turned_away(result):
    if result.returncode != 255:
        return False
    text = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else \
        str(result.stderr)
    return any(mark in text for mark in _TURNED_AWAY)


def _unreachable(plain_lines):
    """ssh exited 255 because it could not reach the host (not because the helper failed)."""
    return any(line.startswith(_SSH_FAILURES) or any(f in line for f in _SSH_FAILURES[1:])
               for line in plain_lines if "tm-iscsi-node" not in line)


def checked_host(host):
    if not naming.valid_host(host):
        raise DriverError(f"{str(host)[:80]!r} is not a host name tm_iscsi can reach (letters, "
                          "digits, '.', '_' and '-', not starting with '-')")
    return host


def ssh_command(ssh_argv, host, remote_words):
    """ssh ... -- HOST 'WORD WORD ...': options end before the host, and ssh hands the remote
    side one shell line, so every word is quoted on its own."""
    return [*ssh_argv, "--", checked_host(host), " ".join(shlex.quote(w) for w in remote_words)]


class Node:
    def __init__(self, host, settings):
        self.host = checked_host(host)
        self.settings = settings

    def _argv(self, command, args, budget=None, args_later=False):
        # The node stops by the budget (at a point a re-run converges from) instead of going on
        # after we gave up; ssh itself is given the budget plus the time an answer takes.
        head = ["--budget", str(int(budget))] if budget else []
        head += ["--args-on-stdin"] if args_later else []
        remote = [*self.settings.node_argv, *head, command, *[str(a) for a in args]]
        return ssh_command(self.settings.ssh_argv, self.host, remote)

    def call(self, command, *args, stdin=None, timeout=None):
        """Run `tm-iscsi-node COMMAND ARGS` on the node; return its JSON object. `stdin` is
        bytes, text, or a file object streamed as bulk data (an image, a tar of a VM dir)."""
        return self._json(command, self._run(command, args, stdin, timeout, binary_out=False))

    def begin(self, command, *args, timeout=None):
        """Start `tm-iscsi-node COMMAND ARGS ...` now, its other arguments and stdin to follow
        (`Started.finish`): the ssh session, sudo, Python and the command's imports take their
        time while the caller works out those arguments (a host-attach while the storage node
        exports). `timeout` counts from now."""
        return Started(self, command, args, timeout or self.settings.ssh_timeout)

    def _json(self, command, result):
        try:
            return json.loads(result.stdout) if result.stdout.strip() else {}
        except ValueError:
            raise DriverError(f"{self.host}: tm-iscsi-node {command} printed no JSON: "
                              f"{result.stdout[:200]!r}")

    def stream_out(self, command, *args, sink, timeout=None):
        """Run a command whose stdout is bulk data, written to the file object `sink`."""
        self._run(command, args, None, timeout, binary_out=True, sink=sink)

    def _run(self, command, args, stdin, timeout, binary_out, sink=None):
        _FAULTS.next()
        _FAULTS.check("before", self.host, command)
        started = time.monotonic()
        try:
            result = self._execute(command, args, stdin, timeout, binary_out, sink)
        finally:
            _trace(self.host, command, time.monotonic() - started)
        _FAULTS.check("after", self.host, command)
        return result

    def _execute(self, command, args, stdin, timeout, binary_out, sink):
        timeout = timeout or self.settings.ssh_timeout
        ends = time.monotonic() + timeout
        # A stream read once cannot be sent twice; bytes can.
        again = stdin is None or isinstance(stdin, (bytes, str))
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            result = self._execute_once(command, args, stdin, timeout, sink)
            timeout = int(ends - time.monotonic())
            if not (again and turned_away(result)) or attempt == CONNECT_ATTEMPTS or \
                    timeout < 10:
                break
            log.info(f"{self.host} turned the connection away (attempt {attempt}); again")
            time.sleep(random.uniform(0.2, 1.0) * attempt)
        return self._outcome(command, result, binary_out)

    def _execute_once(self, command, args, stdin, timeout, sink):
        argv = self._argv(command, args, budget=timeout)
        kwargs = {}
        feeder = None
        if stdin is None:
            kwargs["stdin"] = subprocess.DEVNULL
        elif isinstance(stdin, (bytes, str)):
            kwargs["input"] = stdin.encode() if isinstance(stdin, str) else stdin
        elif _plain_file(stdin):
            kwargs["stdin"] = stdin
        else:
            feeder = _Feeder(stdin)
            kwargs["stdin"] = feeder.read_end
        try:
            if feeder:
                feeder.start()
            result = subprocess.run(argv, stdout=sink if sink is not None else subprocess.PIPE,
                                    stderr=subprocess.PIPE, timeout=timeout + ANSWER_GRACE,
                                    **kwargs)
        except subprocess.TimeoutExpired:
            raise DriverError(f"{self.host}: tm-iscsi-node {command} did not finish within "
                              f"{timeout}s")
        finally:
            if feeder:
                feeder.finish()
        if feeder and feeder.error and result.returncode != 0:
            raise DriverError(f"{self.host}: tm-iscsi-node {command}: reading its input failed: "
                              f"{feeder.error}")
        return result

    def _outcome(self, command, result, binary_out=False):
        """The finished ssh's result, or the one-line error it means."""
        stderr = result.stderr.decode(errors="replace")
        plain = []
        for line in stderr.splitlines():
            if line.startswith(("INFO:", "WARN:", "DEBUG:")):
                log.info(f"{self.host}: {line.split(':', 1)[1].strip()}")
            elif line.strip():
                plain.append(line.strip())
        if result.returncode == 255 and _unreachable(plain):
            raise NodeUnreachable(f"cannot reach {self.host} over ssh: {plain[-1]}")
        if result.returncode == 255 and not plain:
            # ssh says 255 for a remote command killed by a signal, too: the host answered, so
            # it is not "unreachable" (that would revoke its ACLs as if it were gone).
            raise DriverError(f"{self.host}: tm-iscsi-node {command} ended without an answer "
                              "(killed?); re-running the action continues from where it stopped")
        if result.returncode != 0:
            reason = plain[-1] if plain else f"exit code {result.returncode}"
            raise DriverError(f"{self.host}: {reason}")
        if not binary_out and result.stdout is not None:
            result.stdout = result.stdout.decode(errors="replace")
        return result


class Started:
    """A node call under way whose last arguments are not known yet (Node.begin): finish() sends
    them; abandon() ends a call that is not finished (and does nothing to one that is)."""

    def __init__(self, node, command, args, timeout):
        self.node, self.command, self.args, self.timeout = node, command, args, timeout
        self._ended = False
        _FAULTS.next()
        self._index = _FAULTS.count
        _FAULTS.check("before", node.host, command)
        self.started = time.monotonic()
        self._proc = subprocess.Popen(node._argv(command, args, budget=timeout, args_later=True),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)

    def _left(self):
        return max(1.0, self.timeout + ANSWER_GRACE - (time.monotonic() - self.started))

    def finish(self, *args, stdin=None):
        """Send the other arguments (and `stdin`, bytes or text); return the JSON answer."""
        line = json.dumps([str(a) for a in args]).encode() + b"\n"
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        sent = time.monotonic()
        self._ended = True
        try:
            try:
                out, err = self._proc.communicate(line + data, timeout=self._left())
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.communicate()
                raise DriverError(f"{self.node.host}: tm-iscsi-node {self.command} did not "
                                  f"finish within {self.timeout}s")
        finally:
            _trace(self.node.host, self.command, time.monotonic() - sent,
                   begun_before=sent - self.started)
        result = subprocess.CompletedProcess(self._proc.args, self._proc.returncode, out, err)
        if turned_away(result):
            # Nothing ran there: the whole call, made now (and tried again as any call is).
            left = int(self.timeout - (time.monotonic() - self.started))
            result = self.node._execute(self.command, [*self.args, *args], data or None,
                                        max(10, left), False, None)
        else:
            result = self.node._outcome(self.command, result)
        _FAULTS.check("after", self.node.host, self.command, self._index)
        return self.node._json(self.command, result)

    def abandon(self):
        """The call is not wanted after all: the node gets no arguments, so it changes nothing
        and ends."""
        if self._ended:
            return
        self._ended = True
        try:
            self._proc.communicate(b"", timeout=min(30.0, self._left()))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()


class _Later:
    """Node.begin for a node object that only has `call`: the whole call happens at finish()."""

    def __init__(self, node, command, args, timeout):
        self.node, self.command, self.args, self.timeout = node, command, args, timeout

    def finish(self, *args, stdin=None):
        return self.node.call(self.command, *self.args, *args, stdin=stdin,
                              timeout=self.timeout)

    def abandon(self):
        pass


def begin(node, command, *args, timeout=None):
    """node.begin(...) when the node can start a call early, else a call made at finish()."""
    start = getattr(node, "begin", None)
    if start is not None:
        return start(command, *args, timeout=timeout)
    return _Later(node, command, args, timeout)
