"""The host's half of a write-back checkpoint (tm_iscsi.protocol, "write-back checkpoints").

drain: each write-back layer is written back while the VM runs: first in write-back mode (the
cleaner policy; the VM's writes to cached blocks still land locally) until little is left, then
the rest in writethrough mode (the VM's writes go through to the clone: none waits for the
drain, but each waits for the storage node), which it stays in: from then on every write the VM
sees completed is on the clone. The stack records the checkpoint's token and
whether it was in write-back before. With `hold`, the disks' top devices are then suspended
(I/O queued, not failed), so that one instant cuts several disks; a detached watchdog resumes
them after `hold_seconds` if nobody did.

resume: tops resumed, write-back again where it was before; valid only if every stack still
carries the token (nothing else changed its mode since the drain: a flush for a migration
clears it, and then the layer stays clean for that flush) and, with a hold, was still held (a
host command that found the tops suspended with their lock free resumed them)."""
import subprocess
import sys
import time

from tm_iscsi.node import locks
from tm_iscsi.node.errors import NodeError

from . import dmsetup, stack, state, writeback


def _top_device(st):
    return stack.top_name(st.name) if stack.has_read(st.mode) else writeback.dm_name(st.name)


def _load(name):
    st = state.load_stack(name)
    if st is None or not stack.has_wb(st.mode):
        raise NodeError(f"no write-back stack named {name} on this host")
    return st


def drain(names, token, flush_seconds, hold=False, hold_seconds=30):
    until = time.monotonic() + flush_seconds
    results = []
    for name in names:
        with locks.lock("stack", name):
            st = _load(name)
            wbn = writeback.dm_name(name)
            live = dmsetup.table(wbn)
            if live is None:
                raise NodeError(f"write-back cache {wbn} of stack {name} does not exist")
            was_writeback = writeback.caches_writes(live) or (
                st.checkpoint is not None and st.checkpoint_writeback)
            dirty = writeback.read_status(wbn).dirty
            predrain = writeback.predrain(wbn, max(1, (until - time.monotonic()) / 2))
            flushed = writeback.flush(wbn, max(1, int(until - time.monotonic())))
            # What the whole drain wrote back; writethrough_seconds: how long the VM's writes
            # waited for the storage node.
            flushed.update(dirty_before_blocks=dirty, predrain_seconds=predrain,
                           writethrough_seconds=flushed["seconds"])
            st.checkpoint, st.checkpoint_writeback = token, was_writeback
            state.save_stack(st)
        results.append(dict(flushed, name=name, was_writeback=was_writeback))
    held_at = None
    if hold:
        for name in names:
            with locks.lock("stack", name):
                dmsetup.suspend(_top_device(_load(name)))
        held_at = time.time()
        _watchdog(names, token, hold_seconds)
    return {"stacks": results, "held_at": held_at}


def _watchdog(names, token, seconds):
    """A resume of this checkpoint after `seconds`, detached from this call: a front-end that
    died during the hold leaves the VM's I/O waiting no longer than that (a late one finds the
    token gone and does nothing)."""
    from tm_iscsi import protocol
    request = protocol.encode(protocol.CheckpointResume(stacks=list(names), token=token))
    argv = [sys.executable, "-m", "tm_iscsi.node", protocol.CHECKPOINT_RESUME, "--request",
            request, "--watchdog-after", str(int(seconds))]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def resume(names, token):
    results = []
    for name in names:
        with locks.lock("stack", name):
            st = state.load_stack(name)
            if st is None:
                results.append({"name": name, "valid": False, "reason": "stack gone"})
                continue
            top = dmsetup.info(_top_device(st))
            was_held = top is not None and top.suspended
            mine = st.checkpoint == token
            wbn = writeback.dm_name(name)
            live = dmsetup.table(wbn)
            clean = live is not None and not writeback.is_writeback(live)
            if mine:
                restore = st.checkpoint_writeback and live is not None
                # Under a held top (a dm-clone above the layer), back to write-back first: the
                # VM's I/O goes on in write-back at once, and the reload stalls nothing more.
                layered = top is not None and top.name != wbn
                if restore and layered:
                    writeback.set_writeback(wbn)
                if was_held:
                    dmsetup.resume(top.name)
                if restore and not layered:
                    writeback.set_writeback(wbn)
                st.checkpoint = None
                state.save_stack(st)
            results.append({"name": name, "valid": mine and clean, "held": was_held,
                            "writeback": bool(mine and st.checkpoint_writeback)})
    return {"stacks": results, "valid": all(r["valid"] for r in results)}
