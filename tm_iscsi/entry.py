"""The one wrapper every program's entry runs in (TM and DS actions, the node helper, the admin
tool, the hooks): an exception nobody foresaw becomes one line on stderr for the administrator,
and its traceback goes to syslog (tag tm_iscsi), never to oned's log or the protocol's stdout."""
import sys
import traceback

EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE


def _to_syslog(program, text):
    try:
        import syslog
        syslog.openlog("tm_iscsi", syslog.LOG_PID, syslog.LOG_USER)
        for line in text.splitlines():
            syslog.syslog(syslog.LOG_ERR, f"{program}: {line}")
    except Exception:  # noqa: BLE001 - no syslog socket: the one stderr line still says it
        pass


def guarded(program, func, *args, **kwargs):
    """func(*args) -> exit code; any unexpected exception -> one stderr line, exit 70."""
    try:
        return func(*args, **kwargs)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the point of this wrapper
        _to_syslog(program, traceback.format_exc())
        reason = " ".join(str(err).split())[:200]
        print(f"{program}: internal error ({type(err).__name__}: {reason}); the traceback is in "
              "syslog (journalctl -t tm_iscsi)", file=sys.stderr)
        return EXIT_INTERNAL


def stdin_bytes():
    """What oned wrote on stdin, as bytes: its documents are base64 (ASCII), and whatever else
    arrives must be refused in one line by the decoder, never by the locale's text codec."""
    stream = sys.stdin
    if stream is None:
        return b""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer.read()
    text = stream.read()
    return text.encode("utf-8", "replace") if isinstance(text, str) else text
