"""The host's commands of a write-back checkpoint (dmcache/checkpoint.py, tm_iscsi.protocol)."""
import time

from .. import protocol
from .cli import checked_command as command, checked_requests
from .cli import request_option as _request_option
from .cmd_cache import NAME
from .naming_args import int_range
from .txn_host import _checked


def _check(req):
    for name in req.stacks:
        _checked(NAME, name)


@command(protocol.CHECKPOINT_DRAIN, "write a VM's write-back stacks back and keep them clean "
         "(optionally suspend their tops) for a checkpoint")
def checkpoint_drain(args):
    from dmcache import checkpoint, orphans
    (req,) = checked_requests(protocol.CheckpointDrain, args.request[:1], _check)
    orphans.resume_orphans()
    return checkpoint.drain(req.stacks, req.token, req.flush_seconds, req.hold, req.hold_seconds)


checkpoint_drain.configure = _request_option


@command(protocol.CHECKPOINT_RESUME, "end a checkpoint: tops resumed, write-back again; say "
         "whether the stacks stayed clean")
def checkpoint_resume(args):
    from dmcache import checkpoint
    (req,) = checked_requests(protocol.CheckpointResume, args.request[:1], _check)
    if args.watchdog_after:
        time.sleep(args.watchdog_after)
    return checkpoint.resume(req.stacks, req.token)


def _resume_options(p):
    _request_option(p)
    p.add_argument("--watchdog-after", type=int_range(1, protocol.MAX_HOLD_SECONDS, "seconds"),
                   help="wait this long first (the watchdog a hold leaves behind)")


checkpoint_resume.configure = _resume_options
