"""Every configuration file of tm_iscsi, rendered from one site file, and oned.conf checked.

    python -m tm_iscsi.config_render --site SITE --out DIR [--oned-conf /etc/one/oned.conf]
    python -m tm_iscsi.config_render check-oned /etc/one/oned.conf \
        [--vmm-execrc /etc/one/vmm_exec/vmm_execrc]
    python -m tm_iscsi.config_render validate DIR/oned/iscsi_lvm.conf

The templates are the Jinja2 files under `conf/` (see conf/README.md for what each one becomes
and where install.sh puts it). The site file is INI, read with the standard library only
(tm_iscsi.site).

oned accepts a driver only when three things agree: its name in the `-d` list of the TM_MAD or
DATASTORE_MAD ARGUMENTS, a TM_MAD_CONF / DS_MAD_CONF entry of that name, and template syntax it
can parse. A mistake shows up only when oned restarts (or, worse, when the first datastore is
created), so the rendered snippet is parsed and checked here, with the same rules `check-oned`
applies to a real oned.conf.
"""
import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

from .site import DRIVER, SiteError, load_site



def _default_templates():
    """conf/ of a checkout, else where an installed package keeps it (share/tm_iscsi/conf)."""
    candidates = [os.environ.get("TM_ISCSI_CONF_DIR"),
                  Path(__file__).resolve().parent.parent / "conf",
                  Path(sys.prefix) / "share" / "tm_iscsi" / "conf"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "oned" / "iscsi_lvm.conf.j2").is_file():
            return Path(candidate)
    return Path(__file__).resolve().parent.parent / "conf"


DEFAULT_TEMPLATES = _default_templates()

# The stock ARGUMENTS of OpenNebula's oned.conf, which the registration extends when the real
# oned.conf is not at hand (checked in release-7.4.0 and the 6.10 line).
STOCK = {
    "7.4": {
        "tm": "-t 15 -d dummy,lvm,shared,fs_lvm,fs_lvm_ssh,qcow2,ssh,local,ceph,dev,"
              "iscsi_libvirt,netapp,purefa",
        "ds": "-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync,netapp,purefa,virtiofs,"
              "interactive -s dummy,lvm,shared,ssh,local,ceph,fs_lvm,fs_lvm_ssh,qcow2,netapp,"
              "purefa",
        "inherit": ("ISCSI_HOST", "DISK_TYPE", "ALLOW_ORPHANS"),
        "live_disk_snapshots": "kvm-qcow2 kvm-shared kvm-ceph kvm-ssh kvm-local kvm-lvm_thin "
                               "kvm-lvm kvm-netapp qemu-qcow2 qemu-shared qemu-ceph qemu-ssh "
                               "qemu-local qemu-netapp kvm-purefa lxc-qcow2 lxc-shared lxc-ceph "
                               "lxc-ssh lxc-local lxc-lvm_thin lxc-lvm",
    },
    "6.10": {
        "tm": "-t 15 -d dummy,lvm,shared,fs_lvm,fs_lvm_ssh,qcow2,ssh,ceph,dev,vcenter,"
              "iscsi_libvirt",
        "ds": "-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,vcenter,restic,rsync "
              "-s shared,ssh,ceph,fs_lvm,fs_lvm_ssh,qcow2,vcenter",
        "inherit": ("ISCSI_HOST", "DISK_TYPE", "ALLOW_ORPHANS"),
        "live_disk_snapshots": "kvm-qcow2 kvm-shared kvm-ceph kvm-ssh qemu-qcow2 qemu-shared "
                               "qemu-ceph qemu-ssh",
    },
}

# Live disk snapshots are not oned's decision but its KVM driver's (one_vmm_exec.rb): it refuses
# `onevm disk-snapshot-create` on a running VM unless "<VM_MAD>-<TM_MAD>" is listed in
# LIVE_DISK_SNAPSHOTS of vmm_execrc. iscsi_lvm has snap_create_live for both KVM flavours.
VMM_EXECRC = "/etc/one/vmm_exec/vmm_execrc"
LIVE_PAIRS = (f"kvm-{DRIVER}", f"qemu-{DRIVER}")

# What the registration must say. Order is the order of the rendered sections.
TM_MAD_CONF = (
    ("NAME", DRIVER),
    ("LN_TARGET", "NONE"),
    ("CLONE_TARGET", "SELF"),
    ("SHARED", "YES"),
    ("DS_MIGRATE", "YES"),
    ("DRIVER", "raw"),
    ("ALLOW_ORPHANS", "YES"),
    ("TM_MAD_SYSTEM", ""),
    ("DISK_TYPE", "BLOCK"),
)
DS_MAD_CONF = (
    ("NAME", DRIVER),
    ("REQUIRED_ATTRS", "ISCSI_HOST"),
    ("PERSISTENT_ONLY", "NO"),
    ("MARKETPLACE_ACTIONS", "export"),
)
INHERIT = ("ISCSI_HOST", "ISCSI_PORTAL", "VG_NAME", "THIN_POOL", "CACHE_MODE", "ISCSI_IQN_BASE")
# Kept encrypted in oned's database and shown encrypted by `onedatastore show`; oned decrypts it
# for the DS driver's actions, and for `one.datastore.info` with decrypt (oneadmin only), which
# is how the TM actions read it.
ENCRYPTED = ("ISCSI_CHAP_PASSWORD",)

# Attributes oned knows in these sections, and the values it accepts for the enumerated ones.
_TM_MAD_CONF_ATTRS = {"NAME", "LN_TARGET", "CLONE_TARGET", "SHARED", "DS_MIGRATE",
                      "DS_LIVE_MIGRATE", "DS_MIGRATE_SNAP", "DRIVER", "ALLOW_ORPHANS",
                      "PERSISTENT_SNAPSHOTS", "TM_MAD_SYSTEM", "DISK_TYPE"}
_TM_MAD_CONF_PER_SYSTEM = re.compile(r"^(LN_TARGET|CLONE_TARGET|DISK_TYPE)_[A-Z0-9_]+$")
_DS_MAD_CONF_ATTRS = {"NAME", "REQUIRED_ATTRS", "PERSISTENT_ONLY", "MARKETPLACE_ACTIONS",
                      "DATASTORE_CAPACITY_CHECK", "CONCURRENT_FORGET"}
_ENUMS = {
    "LN_TARGET": {"NONE", "SELF", "SYSTEM"},
    "CLONE_TARGET": {"NONE", "SELF", "SYSTEM"},
    "SHARED": {"YES", "NO"},
    "DS_MIGRATE": {"YES", "NO"},
    "DS_LIVE_MIGRATE": {"YES", "NO"},
    "DS_MIGRATE_SNAP": {"YES", "NO"},
    "PERSISTENT_SNAPSHOTS": {"YES", "NO"},
    "PERSISTENT_ONLY": {"YES", "NO"},
    "ALLOW_ORPHANS": {"YES", "NO", "MIXED", "FORMAT", "LINEAR"},
    "DISK_TYPE": {"FILE", "BLOCK", "RBD", "CDROM", "GLUSTER", "SHEEPDOG", "ISCSI"},
}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DRIVER_LIST_RE = re.compile(r"^\w[\w.-]*(,\w[\w.-]*)*$")


# -- oned.conf syntax ------------------------------------------------------------------------

class OnedSyntaxError(ValueError):
    pass


class Attr:
    """One top-level `NAME = value` or `NAME = [ K = V, ... ]` of an oned.conf-like file."""

    def __init__(self, name, value, line, pairs=None):
        self.name = name.upper()
        self.value = value          # str for a single attribute, None for a vector
        self.pairs = pairs          # [(KEY, value, quoted)] for a vector
        self.line = line

    def get(self, key):
        for k, v, _ in self.pairs or ():
            if k == key:
                return v
        return None


_TOKEN_RE = re.compile(r'''
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"[^"]*")
  | (?P<open>\[) | (?P<close>\]) | (?P<comma>,) | (?P<equals>=)
  | (?P<word>[^\s="\[\],\#]+)
  | (?P<bad>")
''', re.VERBOSE)


def _tokens(text):
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        kind = m.lastgroup
        value = m.group()
        if kind == "bad":
            raise OnedSyntaxError(f"line {line}: unterminated quoted value")
        if kind not in ("space", "comment"):
            yield kind, value, line
        line += value.count("\n")
        pos = m.end()


def parse_oned(text, strict=False):
    """Parse oned.conf syntax into a list of Attr. `strict` (our own snippets) also requires
    every value to be quoted, which oned does not insist on for plain words."""
    toks = list(_tokens(text))
    attrs, i = [], 0

    def expect(kind, what):
        nonlocal i
        if i >= len(toks):
            raise OnedSyntaxError(f"end of file: expected {what}")
        tok = toks[i]
        if tok[0] != kind:
            raise OnedSyntaxError(f"line {tok[2]}: expected {what}, found {tok[1]!r}")
        i += 1
        return tok

    def value(owner):
        nonlocal i
        if i < len(toks) and toks[i][0] == "string":
            tok = toks[i]
            i += 1
            return tok[1][1:-1], True
        tok = expect("word", f"a value for {owner}")
        if strict:
            raise OnedSyntaxError(f"line {tok[2]}: value of {owner} must be quoted: "
                                  f'{owner} = "{tok[1]}"')
        return tok[1], False

    while i < len(toks):
        _, name, line = expect("word", "an attribute name")
        if not _NAME_RE.match(name):
            raise OnedSyntaxError(f"line {line}: {name!r} is not an attribute name")
        expect("equals", f"'=' after {name}")
        if i < len(toks) and toks[i][0] == "open":
            i += 1
            pairs, seen = [], set()
            while True:
                _, key, kline = expect("word", f"an attribute name inside {name} = [ ]")
                if not _NAME_RE.match(key):
                    raise OnedSyntaxError(f"line {kline}: {key!r} is not an attribute name")
                if key.upper() in seen:
                    raise OnedSyntaxError(f"line {kline}: {key} appears twice in {name}")
                seen.add(key.upper())
                expect("equals", f"'=' after {key}")
                v, quoted = value(f"{name}/{key}")
                pairs.append((key.upper(), v, quoted))
                if i < len(toks) and toks[i][0] == "comma":
                    i += 1
                    continue
                expect("close", f"',' or ']' in {name} = [ ] (opened on line {line})")
                break
            attrs.append(Attr(name, None, line, pairs))
        else:
            v, _ = value(name)
            attrs.append(Attr(name, v, line))
    return attrs


# -- what a registration is -------------------------------------------------------------------

def _option_list(arguments, flag):
    """The comma list after `flag` in a driver's ARGUMENTS, or None when the flag is absent."""
    try:
        words = shlex.split(arguments)
    except ValueError as err:
        raise OnedSyntaxError(f"ARGUMENTS {arguments!r}: {err}")
    for n, word in enumerate(words):
        if word == flag:
            if n + 1 >= len(words) or not _DRIVER_LIST_RE.match(words[n + 1]):
                raise OnedSyntaxError(f"ARGUMENTS {arguments!r}: {flag} needs a comma list of "
                                      "driver names without spaces")
            names = words[n + 1].split(",")
            if len(set(names)) != len(names):
                raise OnedSyntaxError(f"ARGUMENTS {arguments!r}: a driver is listed twice "
                                      f"after {flag}")
            return names
    return None


def with_driver(arguments, flag, driver=DRIVER):
    """`arguments` with `driver` appended to the list after `flag` (added when missing)."""
    words = shlex.split(arguments)
    for n, word in enumerate(words):
        if word == flag and n + 1 < len(words):
            names = words[n + 1].split(",")
            if driver not in names:
                words[n + 1] = ",".join(names + [driver])
            return " ".join(words)
    if flag == "-d":
        # No -d list means every driver under remotes/ is allowed: nothing to add.
        return arguments
    return " ".join(words + [flag, driver])


def registration(attrs):
    """What these attributes register: the pieces check_registration looks at."""
    def sections(name):
        return [a for a in attrs if a.name == name]

    def one_vector(name):
        found = [a for a in sections(name) if a.pairs is not None]
        if len(found) > 1:
            raise OnedSyntaxError(f"{name} appears {len(found)} times (lines "
                                  f"{', '.join(str(a.line) for a in found)}); oned uses one")
        return found[0] if found else None

    def conf_of(name):
        found = [a for a in sections(name)
                 if a.pairs is not None and (a.get("NAME") or "") == DRIVER]
        if len(found) > 1:
            raise OnedSyntaxError(f"{name} for {DRIVER} appears {len(found)} times (lines "
                                  f"{', '.join(str(a.line) for a in found)})")
        return found[0] if found else None

    return {
        "tm_mad": one_vector("TM_MAD"),
        "datastore_mad": one_vector("DATASTORE_MAD"),
        "tm_mad_conf": conf_of("TM_MAD_CONF"),
        "ds_mad_conf": conf_of("DS_MAD_CONF"),
        "inherit": [a.value for a in sections("INHERIT_DATASTORE_ATTR") if a.value is not None],
        "encrypted": [a.value for a in sections("DATASTORE_ENCRYPTED_ATTR")
                      if a.value is not None],
    }


def check_registration(attrs, strict=False):
    """Problems (one line each) that keep oned from running iscsi_lvm as tm_iscsi needs it.
    `strict`: our own snippet, where every attribute must also be one oned knows."""
    problems = []
    try:
        reg = registration(attrs)
    except OnedSyntaxError as err:
        return [str(err)]

    def check_mad(key, section, executable, flags):
        mad = reg[key]
        if mad is None:
            problems.append(f"no {section} = [ ... ] section")
            return
        if mad.get("EXECUTABLE") != executable:
            problems.append(f"{section} (line {mad.line}): EXECUTABLE must be \"{executable}\"")
        arguments = mad.get("ARGUMENTS")
        if arguments is None:
            problems.append(f"{section} (line {mad.line}): no ARGUMENTS")
            return
        for flag, required in flags:
            try:
                names = _option_list(arguments, flag)
            except OnedSyntaxError as err:
                problems.append(f"{section} (line {mad.line}): {err}")
                continue
            if names is None and not required:
                continue
            if names is None or DRIVER not in names:
                problems.append(f"{section} (line {mad.line}): ARGUMENTS must list {DRIVER} "
                                f"after {flag}")

    # No -d in TM_MAD means "every driver"; -s must name us for oned to monitor the
    # shared system datastore with tm/iscsi_lvm/monitor.
    check_mad("tm_mad", "TM_MAD", "one_tm", [("-d", False)])
    check_mad("datastore_mad", "DATASTORE_MAD", "one_datastore", [("-d", False), ("-s", True)])

    def check_conf(key, section, wanted, known):
        conf = reg[key]
        if conf is None:
            problems.append(f"no {section} = [ NAME = \"{DRIVER}\", ... ]")
            return
        for attr, value, quoted in conf.pairs:
            if strict and attr not in known and not (
                    section == "TM_MAD_CONF" and _TM_MAD_CONF_PER_SYSTEM.match(attr)):
                problems.append(f"{section} (line {conf.line}): oned knows no attribute {attr}")
            enum = _ENUMS.get(attr)
            if enum and value.upper() not in enum:
                problems.append(f"{section} (line {conf.line}): {attr} = \"{value}\" is not "
                                f"one of {', '.join(sorted(enum))}")
        for attr, value in wanted:
            have = conf.get(attr)
            if have is None:
                problems.append(f"{section} for {DRIVER} (line {conf.line}): {attr} is missing")
            elif attr == "REQUIRED_ATTRS":
                listed = [a.strip() for a in have.split(",") if a.strip()]
                if "ISCSI_HOST" not in listed:
                    problems.append(f"{section} for {DRIVER} (line {conf.line}): REQUIRED_ATTRS "
                                    "must include ISCSI_HOST")
            elif (have.upper() if attr in _ENUMS else have) != (
                    value.upper() if attr in _ENUMS else value):
                problems.append(f"{section} for {DRIVER} (line {conf.line}): {attr} is "
                                f"\"{have}\", tm_iscsi needs \"{value}\"")

    check_conf("tm_mad_conf", "TM_MAD_CONF", TM_MAD_CONF, _TM_MAD_CONF_ATTRS)
    check_conf("ds_mad_conf", "DS_MAD_CONF", DS_MAD_CONF, _DS_MAD_CONF_ATTRS)
    inherited = {v.upper() for v in reg["inherit"]}
    for attr in INHERIT:
        if attr not in inherited:
            problems.append(f"INHERIT_DATASTORE_ATTR = \"{attr}\" is missing")
    encrypted = {v.upper() for v in reg["encrypted"]}
    for attr in ENCRYPTED:
        if attr not in encrypted:
            problems.append(f"DATASTORE_ENCRYPTED_ATTR = \"{attr}\" is missing (the CHAP "
                            "secret would be kept and shown in clear)")
    if strict:
        for a in attrs:
            if a.name not in ("TM_MAD", "DATASTORE_MAD", "TM_MAD_CONF", "DS_MAD_CONF",
                              "INHERIT_DATASTORE_ATTR", "DATASTORE_ENCRYPTED_ATTR"):
                problems.append(f"line {a.line}: {a.name} does not belong in the registration "
                                "snippet")
    return problems


def validate_snippet(text, stock_inherit=()):
    """Problems of a rendered registration snippet: strict syntax plus check_registration.
    Inherited attributes the stock oned.conf already has may be left out of the snippet."""
    attrs = parse_oned(text, strict=True)
    attrs += [Attr("INHERIT_DATASTORE_ATTR", a, 0) for a in stock_inherit]
    return check_registration(attrs, strict=True)


def check_oned_file(path):
    """Problems of a real oned.conf: empty when iscsi_lvm is registered as tm_iscsi needs."""
    try:
        attrs = parse_oned(Path(path).read_text())
    except OnedSyntaxError as err:
        return [f"{path}: {err}"]
    return [f"{path}: {p}" for p in check_registration(attrs)]


# -- vmm_execrc (shell variables) -------------------------------------------------------------

def parse_shell_rc(text):
    """NAME=value lines of a driver rc file (what `export_rc_vars` exports), quotes removed."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        name = name.strip()
        if name.startswith("export "):
            name = name[len("export "):].strip()
        if not _NAME_RE.match(name):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[name] = value
    return out


def with_live_pairs(value):
    words = value.split()
    return " ".join(words + [p for p in LIVE_PAIRS if p not in words])


def check_vmm_execrc_file(path):
    """Problems of a real vmm_execrc: empty when live disk snapshots of iscsi_lvm are allowed."""
    words = parse_shell_rc(Path(path).read_text()).get("LIVE_DISK_SNAPSHOTS", "").split()
    missing = [p for p in LIVE_PAIRS if p not in words]
    if missing:
        return [f"{path}: LIVE_DISK_SNAPSHOTS does not list {' '.join(missing)} (running VMs "
                "cannot take disk snapshots)"]
    return []


# -- onecfg patch (line format) ---------------------------------------------------------------

class OnecfgError(ValueError):
    pass


def parse_onecfg(text):
    """The changes of an onecfg line-format patch: [(file, command, [path...], value)].

    The format, as `onecfg patch` reads it: `<FILE> <ins|set|rm> <PATH> [<JSON VALUE>]`; PATH
    elements are separated by `/`, a section that can appear several times (TM_MAD_CONF) is
    addressed by its quoted NAME value; values of oned.conf keep their own double quotes inside
    the JSON string."""
    changes = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 3)
        if len(parts) < 3:
            raise OnecfgError(f"line {number}: expected <file> <command> <path> [<value>]")
        filename, command, path = parts[:3]
        if not filename.startswith("/"):
            raise OnecfgError(f"line {number}: {filename!r} is not an absolute path")
        if command not in ("ins", "set", "rm"):
            raise OnecfgError(f"line {number}: unknown command {command!r}")
        if path.startswith('"'):
            raise OnecfgError(f"line {number}: tm_iscsi patches never quote a whole path")
        elements = [e for e in path.split("/") if e]
        value = None
        if len(parts) == 4:
            try:
                value = json.loads(parts[3])
            except ValueError as err:
                raise OnecfgError(f"line {number}: value is not JSON: {err}")
        elif command != "rm":
            raise OnecfgError(f"line {number}: {command} needs a value")
        if filename not in ("/etc/one/oned.conf", VMM_EXECRC):
            raise OnecfgError(f"line {number}: tm_iscsi patches only oned.conf and {VMM_EXECRC}")
        if value is not None:
            if not (isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"'
                    and '"' not in value[1:-1]):
                raise OnecfgError(f"line {number}: a value must be a JSON string that "
                                  f'holds a double-quoted value, like "\\"raw\\""')
        changes.append((filename, command, elements, value))
    return changes


def onecfg_registration(changes):
    """Apply a patch's oned.conf changes to nothing: the same shape as snippet_registration."""
    out = {"tm_mad_arguments": None, "datastore_mad_arguments": None,
           "tm_mad_conf": {}, "ds_mad_conf": {}, "inherit": [], "encrypted": []}
    for filename, command, path, value in changes:
        if filename != "/etc/one/oned.conf" or command == "rm":
            continue
        value = value[1:-1]
        if path == ["TM_MAD", "ARGUMENTS"]:
            out["tm_mad_arguments"] = value
        elif path == ["DATASTORE_MAD", "ARGUMENTS"]:
            out["datastore_mad_arguments"] = value
        elif len(path) == 3 and path[0] in ("TM_MAD_CONF", "DS_MAD_CONF"):
            if path[1] != f'"{DRIVER}"':
                raise OnecfgError(f"{'/'.join(path)}: the section must be addressed as "
                                  f'"{DRIVER}"')
            out[path[0].lower()][path[2]] = value
        elif path == ["INHERIT_DATASTORE_ATTR"]:
            out["inherit"].append(value)
        elif path == ["DATASTORE_ENCRYPTED_ATTR"]:
            out["encrypted"].append(value)
        else:
            raise OnecfgError(f"{'/'.join(path)}: not part of the registration")
    return out


def snippet_registration(text):
    reg = registration(parse_oned(text, strict=True))
    return {
        "tm_mad_arguments": reg["tm_mad"].get("ARGUMENTS") if reg["tm_mad"] else None,
        "datastore_mad_arguments":
            reg["datastore_mad"].get("ARGUMENTS") if reg["datastore_mad"] else None,
        "tm_mad_conf": {k: v for k, v, _ in reg["tm_mad_conf"].pairs} if reg["tm_mad_conf"]
        else {},
        "ds_mad_conf": {k: v for k, v, _ in reg["ds_mad_conf"].pairs} if reg["ds_mad_conf"]
        else {},
        "inherit": list(reg["inherit"]),
        "encrypted": list(reg["encrypted"]),
    }


# -- LVM filter -------------------------------------------------------------------------------

def lvm_accept(device):
    """An LVM filter pattern that accepts exactly this path. LVM's patterns are regular
    expressions; bracketing the few special characters a device path can hold avoids
    backslashes, which lvm.conf strings would need escaped again."""
    body = "".join(f"[{c}]" if c in ".+" else c for c in device)
    return f'"a|^{body}$|"'


def lvm_filter(devices):
    return "[ " + ", ".join([lvm_accept(d) for d in devices] + ['"r|.*|"']) + " ]"


# -- rendering --------------------------------------------------------------------------------

# (template, output, extra context)
def _outputs(site):
    storage = site.storage_devices + site.system_devices
    host = site.host_devices + site.system_devices
    both = list(dict.fromkeys(site.storage_devices + site.host_devices + site.system_devices))
    return [
        ("oned/iscsi_lvm.conf.j2", "oned/iscsi_lvm.conf", {}),
        ("oned/iscsi_lvm.onecfg.j2", "oned/iscsi_lvm.onecfg", {}),
        ("oned/vmm_execrc.line.j2", "oned/vmm_execrc.line", {}),
        ("datastores/image.tpl.j2", "datastores/image.tpl", {}),
        ("datastores/system.tpl.j2", "datastores/system.tpl", {}),
        ("frontend/tm_iscsi.conf.j2", "frontend/tm_iscsi.conf", {}),
        ("frontend/defaultrc.j2", "frontend/defaultrc.block", {}),
        ("sudoers/tm_iscsi.j2", "sudoers/tm_iscsi", {}),
        ("lvm/lvmlocal.conf.j2", "lvm/storage.block",
         {"role_label": "storage node", "global_filter": lvm_filter(storage)}),
        ("lvm/lvmlocal.conf.j2", "lvm/host.block",
         {"role_label": "hypervisor host", "global_filter": lvm_filter(host)}),
        ("lvm/lvmlocal.conf.j2", "lvm/storage-host.block",
         {"role_label": "storage node that is also a host", "global_filter": lvm_filter(both)}),
        ("iscsi/iscsid.conf.j2", "iscsi/iscsid.conf.block", {}),
        ("systemd/tm-iscsi-activate.service.j2", "systemd/tm-iscsi-activate.service", {}),
        ("systemd/tm-iscsi-cache-warm.service.j2", "systemd/tm-iscsi-cache-warm.service", {}),
        ("systemd/tm-iscsi-cache-warm.timer.j2", "systemd/tm-iscsi-cache-warm.timer", {}),
        ("cron/tm-iscsi-cache-warm.j2", "cron/tm-iscsi-cache-warm", {}),
        ("systemd/tm-iscsi-checkpoint.service.j2", "systemd/tm-iscsi-checkpoint.service", {}),
        ("systemd/tm-iscsi-checkpoint.timer.j2", "systemd/tm-iscsi-checkpoint.timer", {}),
        ("cron/tm-iscsi-checkpoint.j2", "cron/tm-iscsi-checkpoint", {}),
        ("boot/tm-iscsi-activate.j2", "boot/50-tm-iscsi-activate", {}),
        ("node/tm-iscsi-node.j2", "node/tm-iscsi-node", {}),
        ("probes/tm_iscsi-cache.sh.j2", "probes/tm_iscsi-cache.sh", {}),
        ("node/node.conf.j2", "node/storage.conf", {"roles": ["storage"]}),
        ("node/node.conf.j2", "node/host.conf", {"roles": ["host"]}),
        ("node/node.conf.j2", "node/storage-host.conf", {"roles": ["storage", "host"]}),
        ("install.env.j2", "install.env", {
            "lvm_filters": [("STORAGE", lvm_filter(storage)), ("HOST", lvm_filter(host)),
                            ("STORAGE_HOST", lvm_filter(both))]}),
    ]


def onecfg_live_snapshots(changes):
    """The LIVE_DISK_SNAPSHOTS value a patch sets in vmm_execrc, or None."""
    for filename, command, path, value in changes:
        if filename == VMM_EXECRC and command == "set" and path == ["LIVE_DISK_SNAPSHOTS"]:
            return value[1:-1]
    return None


def _live_list(site, vmm_execrc):
    """LIVE_DISK_SNAPSHOTS to extend: the real vmm_execrc's when given, else the stock one."""
    if not vmm_execrc:
        return STOCK[site.opennebula]["live_disk_snapshots"]
    try:
        values = parse_shell_rc(Path(vmm_execrc).read_text())
    except OSError as err:
        raise SiteError(f"{vmm_execrc}: {err.strerror}")
    if "LIVE_DISK_SNAPSHOTS" not in values:
        raise SiteError(f"{vmm_execrc}: no LIVE_DISK_SNAPSHOTS line")
    return values["LIVE_DISK_SNAPSHOTS"]


def _stock_or_file(site, oned_conf):
    """The driver ARGUMENTS to extend: those of the real oned.conf when given (keeping the
    administrator's own changes), else OpenNebula's stock ones."""
    stock = STOCK[site.opennebula]
    if not oned_conf:
        return stock["tm"], stock["ds"]
    try:
        reg = registration(parse_oned(Path(oned_conf).read_text()))
    except (OSError, OnedSyntaxError) as err:
        raise SiteError(f"{oned_conf}: {err}")
    for key, name in (("tm_mad", "TM_MAD"), ("datastore_mad", "DATASTORE_MAD")):
        if reg[key] is None or reg[key].get("ARGUMENTS") is None:
            raise SiteError(f"{oned_conf}: no {name} section with ARGUMENTS")
    return reg["tm_mad"].get("ARGUMENTS"), reg["datastore_mad"].get("ARGUMENTS")


def context(site, oned_conf=None, vmm_execrc=None):
    tm_args, ds_args = _stock_or_file(site, oned_conf)
    stock_inherit = STOCK[site.opennebula]["inherit"]
    ctx = site.as_context()
    ctx.update({
        "oned_conf": str(oned_conf) if oned_conf else "",
        "vmm_execrc": VMM_EXECRC,
        "live_disk_snapshots": with_live_pairs(_live_list(site, vmm_execrc)),
        "tm_mad_arguments": with_driver(tm_args, "-d"),
        "datastore_mad_arguments": with_driver(with_driver(ds_args, "-d"), "-s"),
        "tm_mad_conf": list(TM_MAD_CONF),
        "ds_mad_conf": list(DS_MAD_CONF),
        # The same whether or not oned.conf is registered already, so rendering again after
        # registering changes no file: the snippet leaves out what the stock file has, the
        # patch names everything (onecfg skips what is there).
        "inherit_present": [a for a in INHERIT if a in stock_inherit],
        "inherit_add": [a for a in INHERIT if a not in stock_inherit],
        "inherit_all": list(INHERIT),
        "encrypted": list(ENCRYPTED),
        "stock_inherit": list(stock_inherit),
    })
    return ctx


def _environment(templates):
    try:
        import jinja2
    except ImportError:
        raise SiteError("Jinja2 is missing: install python3-jinja2 (or tm_iscsi with its "
                        "dependencies), or render on the front-end and pass the result to "
                        "install.sh --rendered")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["onecfg_value"] = lambda v: json.dumps(f'"{v}"')
    return env


def render(site, templates=DEFAULT_TEMPLATES, oned_conf=None, vmm_execrc=None):
    """{relative output path: text} for every file, checked."""
    env = _environment(templates)
    ctx = context(site, oned_conf, vmm_execrc)
    out = {}
    for template, name, extra in _outputs(site):
        out[name] = env.get_template(template).render(**dict(ctx, **extra))
    _check_rendered(out, ctx)
    return out


def _check_rendered(out, ctx):
    """Never hand out a registration oned would refuse, or a patch that says something else."""
    snippet = out["oned/iscsi_lvm.conf"]
    problems = validate_snippet(snippet, ctx["stock_inherit"])
    if problems:
        raise SiteError("rendered oned.conf snippet is wrong: " + "; ".join(problems))
    changes = parse_onecfg(out["oned/iscsi_lvm.onecfg"])
    if onecfg_live_snapshots(changes) != ctx["live_disk_snapshots"]:
        raise SiteError("rendered onecfg patch does not set LIVE_DISK_SNAPSHOTS as rendered")
    if parse_shell_rc(out["oned/vmm_execrc.line"]).get("LIVE_DISK_SNAPSHOTS") != \
            ctx["live_disk_snapshots"]:
        raise SiteError("rendered vmm_execrc line is wrong")
    patch = onecfg_registration(changes)
    pasted = snippet_registration(snippet)
    pasted["inherit"] = sorted(set(pasted["inherit"]) | set(ctx["inherit_present"]))
    patch["inherit"] = sorted(set(patch["inherit"]))
    if patch != pasted:
        raise SiteError("rendered onecfg patch and oned.conf snippet disagree")
    for name in ("datastores/image.tpl", "datastores/system.tpl"):
        parse_oned(out[name], strict=True)


# Rendered files that may hold the CHAP secret: readable by their owner only.
SECRET_FILES = ("datastores/image.tpl", "datastores/system.tpl")


def write(out, directory):
    directory = Path(directory)
    for name, text in sorted(out.items()):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        mode = (0o755 if name in ("node/tm-iscsi-node", "boot/50-tm-iscsi-activate",
                                 "probes/tm_iscsi-cache.sh") else
                0o600 if name in SECRET_FILES else 0o644)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


# -- command line -----------------------------------------------------------------------------

def _parser():
    p = argparse.ArgumentParser(prog="tm-iscsi-config", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render every configuration file from a site file")
    r.add_argument("--site", required=True, help="the site file (INI, see conf/site.example.ini)")
    r.add_argument("--out", required=True, help="directory to write the files into")
    r.add_argument("--oned-conf", help="extend this oned.conf's driver lists instead of the "
                   "stock ones")
    r.add_argument("--vmm-execrc", help="extend this vmm_execrc's LIVE_DISK_SNAPSHOTS instead "
                   "of the stock list (default: the stock one of [cloud] opennebula)")
    r.add_argument("--templates", default=str(DEFAULT_TEMPLATES), help=argparse.SUPPRESS)
    c = sub.add_parser("check-oned", help="exit 0 when an oned.conf registers iscsi_lvm fully")
    c.add_argument("oned_conf", help="the oned.conf to check")
    c.add_argument("--vmm-execrc", help=f"also check live disk snapshots in this file "
                   f"({VMM_EXECRC})")
    v = sub.add_parser("validate", help="check a rendered registration snippet")
    v.add_argument("snippet")
    v.add_argument("--opennebula", default="7.4", choices=sorted(STOCK))
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "render")
    args = _parser().parse_args(argv)
    try:
        if args.command == "render":
            site = load_site(args.site)
            out = render(site, Path(args.templates), args.oned_conf, args.vmm_execrc)
            write(out, args.out)
            print(f"rendered {len(out)} files into {args.out}")
            return 0
        if args.command == "check-oned":
            problems = check_oned_file(args.oned_conf)
            if args.vmm_execrc:
                problems += check_vmm_execrc_file(args.vmm_execrc)
        else:
            problems = validate_snippet(Path(args.snippet).read_text(),
                                        STOCK[args.opennebula]["inherit"])
    except (SiteError, OnedSyntaxError, OnecfgError, OSError) as err:
        print(f"tm-iscsi-config: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{DRIVER} is registered" if args.command == "check-oned" else "snippet is valid")
    return 1 if problems else 0


def console():
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
