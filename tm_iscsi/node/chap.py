"""CHAP credentials of the export and attach commands.

The user name is an option; the secret is the first line of stdin, never an argument: argv is
readable by every user of the front-end and of the node (ps, /proc/PID/cmdline), stdin is not."""
import sys

from .. import naming
from .errors import NodeError
from .naming_args import checked

USER = checked(naming.valid_chap_user, "CHAP user name (letters, digits, ._@:+/=-)")
# Far more than a secret needs: a reader that stops here never blocks on a stream that goes on.
_LINE_LIMIT = 1024


def add_option(parser):
    parser.add_argument("--chap-user", type=USER,
                        help="require CHAP as this user; the secret is read from stdin (one line)")


def credentials(args):
    """(user, secret) when --chap-user is given, else None."""
    return credentials_from_stdin(args.chap_user)


def credentials_from_stdin(user):
    """(user, secret) with the secret read from stdin, when there is a user; else None."""
    if not user:
        return None
    # From the binary buffer when there is one: what follows the secrets on stdin (a VM
    # directory for host-attach) is read from that same buffer, nothing of it lost to a decoder.
    raw = getattr(sys.stdin, "buffer", None)
    line = raw.readline(_LINE_LIMIT).decode(errors="replace") if raw is not None else \
        sys.stdin.readline(_LINE_LIMIT)
    secret = line.rstrip("\r\n")
    if not secret:
        raise NodeError("--chap-user needs the CHAP secret as the first line of stdin; "
                        "none was given")
    if not naming.valid_chap_secret(secret):
        raise NodeError("the CHAP secret on stdin is not 1-255 printable characters without "
                        "blanks")
    return user, secret
