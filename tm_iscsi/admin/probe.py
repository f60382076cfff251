"""What `tm-iscsi doctor` reads on a node. Sent over SSH to `python3 -` and run as the SSH user,
without sudo (whose rule allows the node helper only): so it reads, changes nothing, and uses
the standard library only. It prints one JSON object; the front-end judges it (doctor.py)."""
import glob
import json
import os
import re
import shutil
import subprocess

ISCSID_CONF = "/etc/iscsi/iscsid.conf"
NODE_RECORDS = "/etc/iscsi/nodes"
LIO_SAVED = "/etc/target/saveconfig.json"
SUDOERS = "/etc/sudoers.d/tm_iscsi"
LIO_UNITS = ("rtslib-fb-targetctl.service", "target.service")
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system",
             "/usr/lib/systemd/system")
TARGETCTL = "/usr/bin/targetctl"
NODE_CONF = "/etc/tm_iscsi/node.conf"
# ssh gives a non-login session a PATH without the sbin directories (Debian's sshd:
# /usr/local/bin:/usr/bin:/bin:/usr/games), where lvmconfig and friends live.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin",
                               "/sbin"])
HOST_UNITS = {"activate": ("tm-iscsi-activate.service", "/etc/tm_iscsi/boot.d/50-tm-iscsi-activate"),
              "warm": ("tm-iscsi-cache-warm.timer", "/etc/cron.d/tm-iscsi-cache-warm")}
CHECKPOINT_UNIT = ("tm-iscsi-checkpoint.timer", "/etc/cron.d/tm-iscsi-checkpoint")


def which(program):
    return shutil.which(program, path=SEARCH_PATH)


def _startup(path):
    """The last `node.startup` assignment of an iscsid.conf-style file (later lines win)."""
    value = None
    with open(path) as f:
        for line in f:
            m = re.match(r"^\s*node\.startup\s*=\s*(\S+)", line)
            if m:
                value = m.group(1)
    return value


def iscsi():
    out = {"startup": None, "error": None, "automatic_records": None, "iscsid_running": False}
    try:
        out["startup"] = _startup(ISCSID_CONF)
    except OSError as err:
        out["error"] = f"{ISCSID_CONF}: {err.strerror}"
    try:
        records = glob.glob(os.path.join(NODE_RECORDS, "*", "*", "*"))
        out["automatic_records"] = sorted(
            p for p in records if os.path.isfile(p) and _startup(p) == "automatic")
    except OSError:
        pass
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as f:
                if f.read().strip() == "iscsid":
                    out["iscsid_running"] = True
                    break
        except OSError:
            continue
    return out


def lvm():
    out = {"global_filter": None, "scan_lvs": None, "error": None}
    lvmconfig = which("lvmconfig")
    if not lvmconfig:
        out["error"] = "lvmconfig is not installed (lvm2)"
        return out
    # The effective values, defaults included: what LVM really does.
    result = subprocess.run([lvmconfig, "--typeconfig", "full", "devices/global_filter",
                             "devices/scan_lvs"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        out["error"] = (result.stderr.strip().splitlines() or ["lvmconfig failed"])[-1]
        return out
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "global_filter":
            out["global_filter"] = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
        elif key == "scan_lvs":
            out["scan_lvs"] = value.strip()
    return out


def lio():
    out = {"exists": os.path.exists(LIO_SAVED), "readable": False, "targets": None}
    if not out["exists"]:
        return out
    try:
        with open(LIO_SAVED) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return out
    out["readable"] = True
    targets = {}
    for target in saved.get("targets", []):
        acls = set()
        for tpg in target.get("tpgs", []):
            for acl in tpg.get("node_acls", []):
                acls.add(acl.get("node_wwn"))
        targets[target.get("wwn")] = sorted(a for a in acls if a)
    out["targets"] = targets
    return out


def _restore_file(unit_texts):
    """The file the last `targetctl restore` ExecStart of a unit (and its drop-ins) restores:
    its argument, else targetctl's own default (which differs between distributions)."""
    restore = None
    for text in unit_texts:
        for line in text.splitlines():
            m = re.match(r"^\s*ExecStart\s*=\s*\S*targetctl\s+restore\b\s*(\S*)", line)
            if m:
                restore = m.group(1) or ""
    if restore is None:
        return None
    if restore:
        return restore
    try:
        with open(TARGETCTL) as f:
            m = re.search(r'default_save_file\s*=\s*["\']([^"\']+)["\']', f.read())
        return m.group(1) if m else None
    except OSError:
        return None


def lio_boot():
    """Which unit restores LIO at boot, and from which file."""
    out = {"systemd": os.path.isdir("/run/systemd/system"), "unit": None, "enabled": None,
           "restore_file": None}
    for unit in LIO_UNITS:
        texts = []
        for directory in reversed(UNIT_DIRS):   # later ones override earlier ones
            for path in [os.path.join(directory, unit)] + sorted(
                    glob.glob(os.path.join(directory, unit + ".d", "*.conf"))):
                try:
                    with open(path) as f:
                        texts.append(f.read())
                except OSError:
                    continue
        if not texts:
            continue
        out["unit"] = unit
        out["restore_file"] = _restore_file(texts)
        if out["systemd"] and which("systemctl"):
            result = subprocess.run([which("systemctl"), "is-enabled", unit], capture_output=True,
                                    text=True, timeout=30)
            out["enabled"] = result.stdout.strip() or None
        break
    if out["restore_file"]:
        out["same_file"] = os.path.realpath(out["restore_file"]) == os.path.realpath(LIO_SAVED)
    return out


def sudoers():
    out = {"uid": os.getuid(), "file": None, "sudo_list": None}
    try:
        os.stat(SUDOERS)
        out["file"] = True
    except FileNotFoundError:
        out["file"] = False
    except OSError:
        pass   # /etc/sudoers.d is not searchable for this user: ask sudo instead
    if os.getuid() != 0 and which("sudo"):
        result = subprocess.run([which("sudo"), "-n", "-l"], capture_output=True, text=True, timeout=30)
        out["sudo_list"] = result.stdout if result.returncode == 0 else ""
    return out


def node_conf():
    """node.conf's KEY=VALUE lines (install.sh writes it 0644): the node's roles and VGs."""
    out = {}
    try:
        with open(NODE_CONF) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, value = line.split("=", 1)
                    out[key.strip()] = value.strip().strip('"')
    except OSError as err:
        return {"error": f"{NODE_CONF}: {err.strerror}"}
    return out


def unit_state(unit, fallback):
    """A periodic or boot-time job: its systemd unit's enablement, or without systemd whether
    the file its init (boot.d) or cron runs is there."""
    if os.path.isdir("/run/systemd/system") and which("systemctl"):
        result = subprocess.run([which("systemctl"), "is-enabled", unit],
                                capture_output=True, text=True, timeout=30)
        return {"unit": unit, "enabled": result.stdout.strip() or "not-found"}
    return {"file": fallback, "present": os.path.isfile(fallback)}


def unit_ok(found):
    return found.get("enabled") == "enabled" or found.get("present") is True


def host_units():
    """Boot-time activation and the read-cache warm-up."""
    out = {"systemd": os.path.isdir("/run/systemd/system")}
    for key, (unit, fallback) in HOST_UNITS.items():
        out[key] = unit_state(unit, fallback)
    return out


def collect():
    return {"iscsi": iscsi(), "lvm": lvm(), "lio": lio(), "lio_boot": lio_boot(),
            "sudoers": sudoers(), "node_conf": node_conf(), "host_units": host_units(),
            "hostname": os.uname().nodename}


if __name__ == "__main__":
    print(json.dumps(collect()))
