"""Registering the hooks with oned (one.hook.allocate), once: a hook of the same NAME is updated
when its template differs and left alone when it does not. Also records each host's initiator
name in oned (ISCSI_INITIATOR), which the fence hook needs when the host is down."""
import os
import shutil
import sys

from tm_iscsi.admin.views import INITIATOR_ATTR, Hook, one_template as render

HOOK_NAMES = {"fence": "tm_iscsi-fence", "leftovers": "tm_iscsi-leftovers",
              "place": "tm_iscsi-place"}
FENCE_TIMEOUT = 300
LEFTOVERS_TIMEOUT = 600
# The scheduler places a new VM within SCHED_MAX_WND_TIME (10 s in oned.conf): the hook has to
# be quicker than that to count for the first placement, and it only reads oned.
PLACE_TIMEOUT = 30
# Compared without case: oned and onehook users write YES/yes, ERROR/error alike.
_NOCASE = {"TYPE", "RESOURCE", "STATE", "LCM_STATE", "REMOTE"}


def hook_command():
    """The installed `tm-iscsi-hook`: next to this Python (a virtualenv's bin), else on PATH."""
    sibling = os.path.join(os.path.dirname(sys.executable), "tm-iscsi-hook")
    if os.access(sibling, os.X_OK):
        return sibling
    found = shutil.which("tm-iscsi-hook")
    return os.path.abspath(found) if found else None


def templates(command, clean_leftovers=False, fence_timeout=FENCE_TIMEOUT,
              leftovers_timeout=LEFTOVERS_TIMEOUT):
    """NAME -> attributes of every hook."""
    leftovers_args = "leftovers $TEMPLATE" + (" --clean" if clean_leftovers else "")
    return {
        HOOK_NAMES["fence"]: {
            "NAME": HOOK_NAMES["fence"], "TYPE": "state", "COMMAND": command,
            "ARGUMENTS": "fence $TEMPLATE", "RESOURCE": "HOST", "STATE": "ERROR",
            "REMOTE": "NO", "TIMEOUT": str(fence_timeout),
        },
        HOOK_NAMES["leftovers"]: {
            "NAME": HOOK_NAMES["leftovers"], "TYPE": "state", "COMMAND": command,
            "ARGUMENTS": leftovers_args, "RESOURCE": "VM", "STATE": "DONE",
            "LCM_STATE": "LCM_INIT", "REMOTE": "NO", "TIMEOUT": str(leftovers_timeout),
        },
        # PENDING/LCM_INIT: a VM just created, released from hold or resumed after an undeploy
        # or a stop, i.e. every time the scheduler is about to place it.
        HOOK_NAMES["place"]: {
            "NAME": HOOK_NAMES["place"], "TYPE": "state", "COMMAND": command,
            "ARGUMENTS": "place $TEMPLATE", "RESOURCE": "VM", "STATE": "PENDING",
            "LCM_STATE": "LCM_INIT", "REMOTE": "NO", "TIMEOUT": str(PLACE_TIMEOUT),
        },
    }


def for_allocate(attributes):
    """oned stores a VM state hook's condition as STATE and LCM_STATE, which one.hook.update
    requires, but one.hook.allocate reads it only from ON (CUSTOM: from STATE and LCM_STATE),
    and erases ON (HookStateVM::parse_template, oned 7.4)."""
    if attributes.get("RESOURCE") == "VM" and "LCM_STATE" in attributes:
        return dict(attributes, ON="CUSTOM")
    return attributes


def differences(wanted, existing):
    """Keys whose value in `existing` (a Hook's attributes) is not the wanted one."""
    changed = []
    for key, value in wanted.items():
        have = existing.get(key)
        if key in _NOCASE:
            same = have is not None and have.upper() == str(value).upper()
        else:
            same = have == str(value)
        if not same:
            changed.append(key)
    return changed


def register(one, command, clean_leftovers=False, dry_run=False):
    """[(name, "created" | "updated" | "unchanged", hook id or None)]."""
    if not command or not os.path.isabs(command):
        raise ValueError(f"the hook command must be an absolute path, not {command!r}")
    existing = {}
    for element in one.hook_pool():
        hook = Hook.from_element(element)
        existing.setdefault(hook.name, hook)
    done = []
    for name, attributes in templates(command, clean_leftovers).items():
        hook = existing.get(name)
        if hook is None:
            hook_id = None if dry_run else one.hook_allocate(render(for_allocate(attributes)))
            done.append((name, "created", hook_id))
        elif differences(attributes, hook.attributes):
            if not dry_run:
                one.hook_update(hook.id, render(attributes), merge=False)
            done.append((name, "updated", hook.id))
        else:
            done.append((name, "unchanged", hook.id))
    return done


def record_initiators(cloud, names=None, dry_run=False):
    """Ask each host its initiator name and write it into its template as ISCSI_INITIATOR.
    [(host, iqn or None, "recorded" | "unchanged" | "unreachable")]."""
    rows = []
    for host in cloud.hosts():
        if names and host.name not in names:
            continue
        live = cloud.live_initiator(host.name)
        if live is None:
            rows.append((host.name, host.initiator, "unreachable"))
        elif live == host.initiator:
            rows.append((host.name, live, "unchanged"))
        else:
            if not dry_run:
                cloud.one.host_update(host.id, f'{INITIATOR_ATTR} = "{live}"', merge=True)
            rows.append((host.name, live, "recorded"))
    return rows
