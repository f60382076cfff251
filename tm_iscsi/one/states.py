"""The numbers oned writes for object states, with oned's own names.

The names are the ones ``onevm show`` prints (``ACTIVE``/``EPILOG_UNDEPLOY``); the numbers are
the order of oned's C++ enums, which new releases only append to. Retired values (13 CANCEL,
14 FAILURE, ...) keep their slot so the numbering below them stays right.

LCM states the TM actions branch on, with the values seen in the oned 7.4.0 captures:

- 1 PROLOG: deploy (clone, ln, mkimage, mkswap); 2 BOOT: deploy (context)
- 4 MIGRATE: live migrate (premigrate, postmigrate, failmigrate)
- 8 PROLOG_MIGRATE: cold migrate (mv host -> host); 35 BOOT_MIGRATE: its context
- 10 EPILOG_STOP: stop (mv host -> frontend); 9 PROLOG_RESUME: resume (mv frontend -> host);
  22 BOOT_STOPPED: its context
- 30 EPILOG_UNDEPLOY: undeploy (mv host -> frontend); 31 PROLOG_UNDEPLOY: resume
  (mv frontend -> host); 32 BOOT_UNDEPLOY: its context
- 11 EPILOG: terminate (delete, mvds), also for an undeployed VM (paths on the front-end)
- 17 HOTPLUG: attach / detach on a running VM (clone, mkimage, delete)
- 33 HOTPLUG_PROLOG_POWEROFF / 34 HOTPLUG_EPILOG_POWEROFF: attach / detach while powered off
- 20 BOOT_POWEROFF: resume after poweroff (context)
- 26 HOTPLUG_SAVEAS (cpds -1, running) / 27 HOTPLUG_SAVEAS_POWEROFF (cpds snap_id)
- 51 / 52 / 53 DISK_SNAPSHOT[_REVERT|_DELETE]_POWEROFF: snap_create / snap_revert / snap_delete
- 62 DISK_RESIZE (running, before the VMM resize) / 63 DISK_RESIZE_POWEROFF: resize

``recover --delete`` runs its delete lines after the VM is already DONE / LCM_INIT (6/0).
"""

from enum import IntEnum


class VmState(IntEnum):
    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    FAILED = 7
    POWEROFF = 8
    UNDEPLOYED = 9
    CLONING = 10
    CLONING_FAILURE = 11


class LcmState(IntEnum):
    LCM_INIT = 0
    PROLOG = 1
    BOOT = 2
    RUNNING = 3
    MIGRATE = 4
    SAVE_STOP = 5
    SAVE_SUSPEND = 6
    SAVE_MIGRATE = 7
    PROLOG_MIGRATE = 8
    PROLOG_RESUME = 9
    EPILOG_STOP = 10
    EPILOG = 11
    SHUTDOWN = 12
    CANCEL = 13
    FAILURE = 14
    CLEANUP_RESUBMIT = 15
    UNKNOWN = 16
    HOTPLUG = 17
    SHUTDOWN_POWEROFF = 18
    BOOT_UNKNOWN = 19
    BOOT_POWEROFF = 20
    BOOT_SUSPENDED = 21
    BOOT_STOPPED = 22
    CLEANUP_DELETE = 23
    HOTPLUG_SNAPSHOT = 24
    HOTPLUG_NIC = 25
    HOTPLUG_SAVEAS = 26
    HOTPLUG_SAVEAS_POWEROFF = 27
    HOTPLUG_SAVEAS_SUSPENDED = 28
    SHUTDOWN_UNDEPLOY = 29
    EPILOG_UNDEPLOY = 30
    PROLOG_UNDEPLOY = 31
    BOOT_UNDEPLOY = 32
    HOTPLUG_PROLOG_POWEROFF = 33
    HOTPLUG_EPILOG_POWEROFF = 34
    BOOT_MIGRATE = 35
    BOOT_FAILURE = 36
    BOOT_MIGRATE_FAILURE = 37
    PROLOG_MIGRATE_FAILURE = 38
    PROLOG_FAILURE = 39
    EPILOG_FAILURE = 40
    EPILOG_STOP_FAILURE = 41
    EPILOG_UNDEPLOY_FAILURE = 42
    PROLOG_MIGRATE_POWEROFF = 43
    PROLOG_MIGRATE_POWEROFF_FAILURE = 44
    PROLOG_MIGRATE_SUSPEND = 45
    PROLOG_MIGRATE_SUSPEND_FAILURE = 46
    BOOT_UNDEPLOY_FAILURE = 47
    BOOT_STOPPED_FAILURE = 48
    PROLOG_RESUME_FAILURE = 49
    PROLOG_UNDEPLOY_FAILURE = 50
    DISK_SNAPSHOT_POWEROFF = 51
    DISK_SNAPSHOT_REVERT_POWEROFF = 52
    DISK_SNAPSHOT_DELETE_POWEROFF = 53
    DISK_SNAPSHOT_SUSPENDED = 54
    DISK_SNAPSHOT_REVERT_SUSPENDED = 55
    DISK_SNAPSHOT_DELETE_SUSPENDED = 56
    DISK_SNAPSHOT = 57
    DISK_SNAPSHOT_REVERT = 58
    DISK_SNAPSHOT_DELETE = 59
    PROLOG_MIGRATE_UNKNOWN = 60
    PROLOG_MIGRATE_UNKNOWN_FAILURE = 61
    DISK_RESIZE = 62
    DISK_RESIZE_POWEROFF = 63
    DISK_RESIZE_UNDEPLOYED = 64
    HOTPLUG_NIC_POWEROFF = 65
    HOTPLUG_RESIZE = 66
    HOTPLUG_SAVEAS_UNDEPLOYED = 67
    HOTPLUG_SAVEAS_STOPPED = 68
    BACKUP = 69
    BACKUP_POWEROFF = 70
    RESTORE = 71


class DatastoreType(IntEnum):
    IMAGE_DS = 0
    SYSTEM_DS = 1
    FILE_DS = 2
    BACKUP_DS = 3


class ImageType(IntEnum):
    OS = 0
    CDROM = 1
    DATABLOCK = 2
    KERNEL = 3
    RAMDISK = 4
    CONTEXT = 5
    BACKUP = 6


class ImageState(IntEnum):
    INIT = 0
    READY = 1
    USED = 2
    DISABLED = 3
    LOCKED = 4
    ERROR = 5
    CLONE = 6
    DELETE = 7
    USED_PERS = 8
    LOCKED_USED = 9
    LOCKED_USED_PERS = 10


# HISTORY/ACTION: what the user asked for when the record was opened. Only informational, so an
# unknown number is reported as "action-<n>" instead of failing.
HISTORY_ACTIONS = (
    "none", "migrate", "live-migrate", "shutdown", "shutdown-hard", "undeploy",
    "undeploy-hard", "hold", "release", "stop", "suspend", "resume", "boot", "delete",
    "delete-recreate", "reboot", "reboot-hard", "resched", "unresched", "poweroff",
    "poweroff-hard", "disk-attach", "disk-detach", "nic-attach", "nic-detach",
    "disk-snapshot-create", "disk-snapshot-delete", "terminate", "terminate-hard",
    "disk-resize", "deploy", "chown", "chmod", "updateconf", "rename", "resize", "update",
    "snapshot-create", "snapshot-delete", "snapshot-revert", "disk-saveas",
    "disk-snapshot-revert", "recover", "retry", "monitor",
)


def history_action_name(number):
    if 0 <= number < len(HISTORY_ACTIONS):
        return HISTORY_ACTIONS[number]
    return "action-%d" % number
