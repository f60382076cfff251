"""`tm-iscsi doctor`: what is missing or misconfigured on the front-end and the nodes, each
finding with the command or change that fixes it.

Facts come from three places: oned (datastores, hosts, hooks), the node helper through its sudo
rule (the same path every driver action takes, so reaching it proves SSH and sudo work), and a
read-only probe run as the SSH user (probe.py: files and effective LVM settings). The judging is
pure (judge_* functions) and unit-tested on fake facts."""
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .. import protocol
from ..errors import DriverError
from ..one.errors import OneError
from ..remote import NodeUnreachable
from .views import Hook

INSTALL = "./install.sh --role {role} --site site.ini"
ONED_CONF = "/etc/one/oned.conf"
REMOTES = "/var/lib/one/remotes"
ISO_TOOLS = ("genisoimage", "mkisofs", "xorriso")


@dataclass
class Check:
    check: str
    node: str
    ok: bool
    detail: str
    fix: Optional[str] = None

    def as_dict(self):
        return asdict(self)


def _ok(check, node, detail):
    return Check(check, node, True, detail)


def _fail(check, node, detail, fix):
    return Check(check, node, False, detail, fix)


# -- the front-end ---------------------------------------------------------------------------

def frontend_checks(cloud, oned_conf=ONED_CONF, remotes=REMOTES, which=shutil.which,
                    unit_state=None):
    if unit_state is None:
        from .probe import unit_state
    from vmm_hooks.register import HOOK_NAMES
    checks = []
    where = "frontend"
    problems = _oned_conf_problems(oned_conf)
    if problems:
        checks.append(_fail("oned-conf", where, "; ".join(problems),
                            f"{INSTALL.format(role='frontend')} --apply-oned (or add "
                            "/etc/one/tm_iscsi/iscsi_lvm.conf to oned.conf by hand), then "
                            "restart oned"))
    else:
        checks.append(_ok("oned-conf", where, f"{oned_conf} registers iscsi_lvm"))
    tool = next((t for t in ISO_TOOLS if which(t)), None)
    checks.append(_ok("iso-tool", where, f"{tool} builds context CD-ROMs") if tool else
                  _fail("iso-tool", where, "no genisoimage, mkisofs or xorriso on the front-end:"
                        " every VM with a context disk fails to deploy",
                        "apt-get install genisoimage (RHEL: dnf install genisoimage)"))
    missing = [d for d in ("tm/iscsi_lvm/clone", "datastore/iscsi_lvm/cp")
               if not os.path.exists(os.path.join(remotes, d))]
    checks.append(_fail("remotes", where, f"missing in {remotes}: {', '.join(missing)}",
                        f"{INSTALL.format(role='frontend')} (installs the driver scripts), "
                        "then `onehost sync --force`") if missing else
                  _ok("remotes", where, f"driver scripts in {remotes}"))
    probes = os.path.join(remotes, "im", "kvm-probes.d", "host", "system")
    if os.path.isdir(probes):
        probe = os.path.join(probes, "tm_iscsi-cache.sh")
        checks.append(_ok("host-probe", where, f"{probe} (the hosts' cache facts for oned)")
                      if os.access(probe, os.X_OK) else
                      _fail("host-probe", where, f"no {probe}: oned's scheduler and `onehost "
                            "show` know nothing of the hosts' caches",
                            f"{INSTALL.format(role='frontend')}, then `onehost sync --force`"))
    try:
        version = cloud.one.system_version()
    except OneError as err:
        checks.append(_fail("oned", where, str(err),
                            "start oned, or point ONE_XMLRPC (~/.one/one_endpoint) at it and "
                            "ONE_AUTH (~/.one/one_auth) at oneadmin's credentials"))
        return checks
    checks.append(_ok("oned", where, f"oned {version} at {cloud.one.endpoint}"))
    entries = cloud.datastores()
    if not entries:
        checks.append(_fail("datastores", where, "no iscsi_lvm datastore in oned",
                            "onedatastore create /etc/one/tm_iscsi/image.tpl; onedatastore "
                            "create /etc/one/tm_iscsi/system.tpl"))
    for entry in entries:
        if entry.error:
            checks.append(_fail("datastores", where, entry.error,
                                f"onedatastore update {entry.id}"))
        else:
            cfg = entry.config
            checks.append(_ok("datastores", where, f"datastore {entry.id}: {cfg.storage_host} "
                              f"{cfg.vg}/{cfg.pool}"))
    if any(e.config is not None and protocol.has_writeback(e.config.cache_mode)
           for e in entries):
        from . import probe
        checks.append(_judge_unit(
            "checkpoints", where, unit_state(*probe.CHECKPOINT_UNIT),
            "write-back disks get no checkpoint: a host lost for good leaves them unusable",
            f"{INSTALL.format(role='frontend')} installs and enables it"))
    names = {Hook.from_element(e).name for e in cloud.one.hook_pool()}
    missing = [n for n in HOOK_NAMES.values() if n not in names]
    checks.append(_fail("hooks", where, f"hooks not registered: {', '.join(missing)}",
                        "tm-iscsi-hook register") if missing else
                  _ok("hooks", where, "fence and leftovers hooks registered"))
    return checks


def _oned_conf_problems(path):
    from ..config_render import OnedSyntaxError, check_oned_file
    try:
        return check_oned_file(path)
    except OSError as err:
        return [f"cannot read {path}: {err.strerror}"]
    except OnedSyntaxError as err:
        return [str(err)]


# -- a node ----------------------------------------------------------------------------------

def helper_facts(cloud, name, roles, node_conf=None, oned_ok=True):
    """What the node helper answers on `name`: {command: answer or {"error": ...}}. Without
    oned, the pool and the cache VG to look at are those of the node's own node.conf."""
    node = cloud.node(name)
    facts = {"unreachable": None}
    calls = []
    node_conf = node_conf or {}
    if "storage" in roles:
        pools = [(g.vg, g.pool) for g in cloud.storage_groups() if g.host == name] \
            if oned_ok else []
        if not pools and node_conf.get("VG_NAME"):
            pools = [(node_conf["VG_NAME"], node_conf.get("THIN_POOL") or "tpool")]
        for vg, pool in pools:
            calls.append((f"pool-status {vg}/{pool}",
                          ("pool-status", "--vg", vg, "--pool", pool)))
        calls.append(("exports", ("exports",)))
    if "host" in roles:
        calls.append(("initiator", ("initiator",)))
        vg = node_conf.get("CACHE_VG")
        calls.append(("cache-status", ("cache-status", "--vg", vg) if vg else ("cache-status",)))
    for key, argv in calls:
        try:
            facts[key] = node.call(*argv)
        except NodeUnreachable as err:
            facts["unreachable"] = str(err)
            break
        except DriverError as err:
            facts[key] = {"error": str(err)}
    return facts


def probe_facts(cloud, name):
    source = Path(__file__).with_name("probe.py").read_text()
    result = cloud.shell(name, ["python3", "-"], input=source)
    if result.returncode != 0:
        lines = (result.stderr or "").strip().splitlines()
        message = lines[-1] if lines else f"exit code {result.returncode}"
        if result.returncode in (124, 255):   # no answer, or ssh itself failed
            return {"unreachable": f"cannot reach {name} over ssh: {message}"}
        return {"error": message}
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {"error": "the probe printed no JSON"}


def _helper_fix(name, roles, message):
    if "sudo" in message or "tm-iscsi-node" in message and "not found" in message:
        return (f"on {name}: {INSTALL.format(role=','.join(roles))} installs the node helper "
                "(/usr/sbin/tm-iscsi-node) and /etc/sudoers.d/tm_iscsi")
    return f"on {name}: see the error; {INSTALL.format(role=','.join(roles))} reinstalls tm_iscsi"


def judge_node(name, roles, helper, probe, helper_in_sudo=True):
    """Checks of one node from its helper answers and its probe facts."""
    roles = sorted(roles)
    role_text = ",".join(roles)
    checks = []
    if helper.get("unreachable"):
        checks.append(_fail("helper", name, helper["unreachable"],
                            f"let oneadmin on the front-end log in to {name} with a key "
                            f"(ssh-copy-id {name} as oneadmin), then check `ssh {name} true`"))
        return checks
    errors = [v["error"] for k, v in helper.items() if isinstance(v, dict) and "error" in v]
    broken = [e for e in errors if "sudo" in e or "command not found" in e
              or "No module named" in e]
    if broken:
        checks.append(_fail("helper", name, broken[0], _helper_fix(name, roles, broken[0])))
        return checks
    checks.append(_ok("helper", name, "node helper answers over ssh" +
                      (" and sudo" if helper_in_sudo else "")))

    if "storage" in roles:
        for key, answer in helper.items():
            if not key.startswith("pool-status"):
                continue
            target = key.split(" ", 1)[1]
            if "error" in answer:
                vg, pool = target.split("/")
                checks.append(_fail("pool", name, answer["error"],
                                    f"on {name}: {INSTALL.format(role='storage')} --device DEV "
                                    f"(creates VG {vg} and its thin pool), or, when the VG "
                                    f"exists: tm-iscsi-node pool-ensure --vg {vg} --pool {pool}"))
            else:
                checks.append(_ok("pool", name, f"thin pool {target}: data "
                                  f"{answer.get('data_percent')}%, metadata "
                                  f"{answer.get('metadata_percent')}%"))
        # The helper reads the saved config as root; the probe (oneadmin) often cannot.
        saved = (helper.get("exports") or {}).get("saved") or probe.get("lio")
        checks.extend(_judge_lio(name, helper.get("exports"), saved))
        checks.extend(_judge_lio_boot(name, probe.get("lio_boot")))

    if "host" in roles:
        answer = helper.get("initiator") or {}
        if "error" in answer or not answer.get("iqn"):
            checks.append(_fail("initiator", name, answer.get("error", "no initiator name"),
                                f"set InitiatorName= in /etc/iscsi/initiatorname.iscsi on {name}"
                                f" ({INSTALL.format(role='host')} does), restart iscsid"))
        else:
            checks.append(_ok("initiator", name, answer["iqn"]))
        checks.extend(_judge_iscsi(name, probe.get("iscsi")))
        checks.extend(_judge_cache_vg(name, helper.get("cache-status")))
        checks.extend(_judge_host_units(name, probe.get("host_units")))

    if "error" in probe:
        checks.append(_fail("probe", name, f"cannot read the node's settings: {probe['error']}",
                            f"check that python3 is installed on {name} and `ssh {name} "
                            "python3 -V` works"))
        return checks
    checks.extend(_judge_lvm(name, role_text, probe.get("lvm") or {}))
    checks.extend(_judge_sudoers(name, role_text, probe.get("sudoers") or {}, helper_in_sudo))
    return checks


LIO_SAVED = "/etc/target/saveconfig.json"


def _judge_lio_boot(name, boot):
    """The file the node helper saves must be the one the boot unit restores: Debian's
    rtslib-fb-targetctl restores /etc/rtslib-fb-target/saveconfig.json by default, RHEL's
    target.service /etc/target/saveconfig.json."""
    if not boot or not boot.get("systemd"):
        return []   # no systemd: its init restores the file it is told to (the lab's does)
    unit = boot.get("unit")
    if unit is None:
        return [_fail("lio-boot", name, "no rtslib-fb-targetctl.service or target.service: LIO "
                      "is not restored at boot, every export is lost on a reboot",
                      f"on {name}: install targetcli (Debian: targetcli-fb), then "
                      f"{INSTALL.format(role='storage')} enables the unit")]
    checks = []
    restore = boot.get("restore_file")
    if restore and not boot.get("same_file"):
        checks.append(_fail("lio-boot", name, f"{unit} restores {restore} at boot, but the "
                            f"node helper saves {LIO_SAVED}: a reboot would bring back stale "
                            "exports or none", f"on {name}, as root: ln -sfn {LIO_SAVED} "
                            f"{restore} (or a drop-in for {unit} with ExecStart=targetctl "
                            f"restore {LIO_SAVED})"))
    elif boot.get("enabled") not in (None, "enabled", "static"):
        checks.append(_fail("lio-boot", name, f"{unit} is {boot.get('enabled')}: LIO is not "
                            "restored at boot", f"on {name}: systemctl enable {unit}"))
    else:
        checks.append(_ok("lio-boot", name, f"{unit} restores {restore or 'the saved config'}"))
    return checks


def _judge_lio(name, exports, saved):
    fix = (f"on {name}, as root: targetctl save {LIO_SAVED} (the node helper saves after every "
           "change it makes; a difference means LIO was changed by hand or a save failed)")
    if saved is None:
        return []
    if not saved.get("exists"):
        return [_fail("lio-saved", name, "/etc/target/saveconfig.json is missing: a reboot of "
                      f"{name} would lose every export (VMs lose their disks)", fix)]
    if not saved.get("readable") or exports is None or "error" in exports:
        return [_ok("lio-saved", name, "/etc/target/saveconfig.json is present (not compared: "
                    "not readable as the ssh user)")]
    live = {t["iqn"]: sorted(t.get("initiators") or []) for t in exports.get("targets", [])}
    stored = {k: sorted(v) for k, v in (saved.get("targets") or {}).items()}
    if live == stored:
        return [_ok("lio-saved", name, f"saved LIO config matches the {len(live)} live targets")]
    only_live = sorted(set(live) - set(stored))
    only_saved = sorted(set(stored) - set(live))
    acl = sorted(k for k in set(live) & set(stored) if live[k] != stored[k])
    parts = []
    if only_live:
        parts.append(f"not saved: {', '.join(only_live)}")
    if only_saved:
        parts.append(f"saved but gone: {', '.join(only_saved)}")
    if acl:
        parts.append(f"ACLs differ on: {', '.join(acl)}")
    return [_fail("lio-saved", name, "saved LIO config differs from the live one (" +
                  "; ".join(parts) + ")", fix)]


def _judge_iscsi(name, facts):
    if facts is None:
        return []
    checks = []
    checks.append(_ok("iscsid", name, "iscsid is running") if facts.get("iscsid_running") else
                  _fail("iscsid", name, "iscsid is not running: no iSCSI login can work",
                        f"on {name}: systemctl enable --now iscsid"))
    fix = (f"set `node.startup = manual` in /etc/iscsi/iscsid.conf on {name} "
           f"({INSTALL.format(role='host')} does): an automatic login at boot brings back "
           "sessions a fence revoked or whose VMs went elsewhere")
    if facts.get("error"):
        checks.append(_fail("node-startup", name, facts["error"], fix))
    elif facts.get("startup") != "manual":
        checks.append(_fail("node-startup", name, f"node.startup = {facts.get('startup')} in "
                            "/etc/iscsi/iscsid.conf", fix))
    elif facts.get("automatic_records"):
        records = facts["automatic_records"]
        checks.append(_fail("node-startup", name, f"{len(records)} node record(s) log in at "
                            f"boot: {', '.join(records[:3])}",
                            f"on {name}: iscsiadm -m node -o update -n node.startup -v manual"))
    else:
        checks.append(_ok("node-startup", name, "node.startup = manual"))
    return checks


def _judge_cache_vg(name, answer):
    if answer is None:
        return []
    if "error" in answer:
        return [_fail("cache-vg", name, answer["error"], f"on {name}: "
                      f"{INSTALL.format(role='host')} --device DEV (creates the cache VG)")]
    if not answer.get("present"):
        return [_fail("cache-vg", name, f"the local cache VG {answer.get('vg')} does not exist: "
                      "every cached disk fails to deploy on this host",
                      f"on {name}: {INSTALL.format(role='host')} --device DEV (a blank local "
                      "disk for it)")]
    free = int(answer.get("free_bytes") or 0) >> 20
    return [_ok("cache-vg", name, f"cache VG {answer.get('vg')}: {free} MiB free, "
                f"{len(answer.get('stacks') or [])} stack(s)")]


_HOST_UNIT_TEXT = {"activate": ("boot-activation", "write-back caches are not flushed at boot: "
                                "a rebooted host's dirty blocks never reach the storage node"),
                   "warm": ("cache-warm", "read caches are only filled at deploys: VMs deployed "
                            "together read everything over iSCSI")}


def _judge_host_units(name, facts):
    if not facts:
        return []
    return [_judge_unit(check, name, facts.get(key) or {}, risk,
                        f"on {name}: {INSTALL.format(role='host')} installs and enables it")
            for key, (check, risk) in _HOST_UNIT_TEXT.items()]


def _judge_unit(check, name, fact, risk, fix):
    """A job's unit enabled (probe.unit_state), or without systemd its file present."""
    if "unit" in fact:
        if fact.get("enabled") in ("enabled", "static", "enabled-runtime"):
            return _ok(check, name, f"{fact['unit']} enabled")
        return _fail(check, name, f"{fact['unit']} is {fact.get('enabled')}: {risk}", fix)
    if fact.get("present"):
        return _ok(check, name, f"{fact['file']} present (no systemd)")
    return _fail(check, name, f"{fact.get('file')} is missing (no systemd): {risk}", fix)


def _judge_lvm(name, role_text, facts):
    fix = (f"on {name}: {INSTALL.format(role=role_text)} writes the tm_iscsi block into "
           "/etc/lvm/lvmlocal.conf (a global_filter that accepts only the node's own disks, "
           "then \"r|.*|\", and scan_lvs = 0)")
    if facts.get("error"):
        return [_fail("lvm-filter", name, facts["error"], fix)]
    checks = []
    patterns = facts.get("global_filter") or []
    if not patterns or patterns[-1] != "r|.*|" or any(p == "a|.*|" for p in patterns):
        checks.append(_fail("lvm-filter", name, f"global_filter is {patterns or 'unset'}: LVM "
                            "would scan the iSCSI disks and activate the guests' own VGs", fix))
    else:
        checks.append(_ok("lvm-filter", name, f"global_filter {patterns}"))
    if facts.get("scan_lvs") != "0":
        checks.append(_fail("scan-lvs", name, f"scan_lvs = {facts.get('scan_lvs')}: LVM looks "
                            "for PVs inside LVs (the guests' disks)", fix))
    else:
        checks.append(_ok("scan-lvs", name, "scan_lvs = 0"))
    return checks


def _judge_sudoers(name, role_text, facts, helper_in_sudo):
    fix = (f"on {name}: {INSTALL.format(role=role_text)} writes /etc/sudoers.d/tm_iscsi "
           "(oneadmin may run the node helper as root, nothing else)")
    listed = facts.get("sudo_list")
    if listed is not None:
        if "tm-iscsi-node" in listed:
            return [_ok("sudoers", name, "sudo lets the ssh user run tm-iscsi-node")]
        return [_fail("sudoers", name, "sudo does not let the ssh user run tm-iscsi-node", fix)]
    if facts.get("file") is False:
        return [_fail("sudoers", name, "/etc/sudoers.d/tm_iscsi is missing", fix)]
    if facts.get("file"):
        return [_ok("sudoers", name, "/etc/sudoers.d/tm_iscsi is present")]
    return [_ok("sudoers", name, "not checked (cannot see /etc/sudoers.d as the ssh user)")]


def judge_initiators(initiators, recorded):
    """`initiators`: host -> live name (None: unknown) of the hosts checked; `recorded`: host ->
    ISCSI_INITIATOR of every host oned has (the others count for uniqueness)."""
    checks = []
    seen = {}
    names = dict((h, i) for h, i in recorded.items() if h not in initiators)
    names.update(initiators)
    for host, iqn in sorted(names.items()):
        if iqn:
            seen.setdefault(iqn, []).append(host)
    for iqn, hosts in sorted(seen.items()):
        if len(hosts) > 1:
            checks.append(_fail("initiator-unique", ",".join(hosts), f"hosts {', '.join(hosts)} "
                                f"share the initiator name {iqn}: each would reach the other's "
                                "LUNs, and fencing one would cut off both",
                                "give each host its own name (iscsi-iname prints one) in "
                                "/etc/iscsi/initiatorname.iscsi, restart iscsid, then run "
                                "tm-iscsi-hook record-initiators"))
    for host, iqn in sorted(initiators.items()):
        if iqn is None or len(seen.get(iqn, [])) > 1 or host not in recorded:
            continue
        if recorded[host] != iqn:
            was = recorded[host] or "not set"
            checks.append(_fail("initiator-recorded", host, f"ISCSI_INITIATOR of host {host} "
                                f"in oned is {was}, the host says {iqn}: fencing a failed host "
                                "reads it from oned", "tm-iscsi-hook record-initiators"))
        else:
            checks.append(_ok("initiator-recorded", host, "ISCSI_INITIATOR matches"))
    return checks


def node_roles(cloud, name, oned_ok=True):
    roles = set()
    if oned_ok:
        if name in cloud.storage_hosts():
            roles.add("storage")
        if any(h.name == name for h in cloud.hosts()):
            roles.add("host")
    return roles


def run(cloud, node=None, roles=None, oned_conf=ONED_CONF, remotes=REMOTES):
    """Every check: the front-end's (without --node) and each node's."""
    checks = []
    oned_ok = True
    if node is None:
        checks.extend(frontend_checks(cloud, oned_conf, remotes))
        oned_ok = all(c.ok for c in checks if c.check == "oned")
    else:
        try:
            cloud.one.system_version()
        except OneError as err:
            oned_ok = False
            if not roles:
                raise DriverError(f"cannot tell the roles of {node} without oned ({err}); give "
                                  "them with --role storage,host")
    names = [node] if node else sorted(set(cloud.storage_hosts()) |
                                       {h.name for h in cloud.hosts()}) if oned_ok else []
    in_sudo = cloud.settings.node_argv[:1] == ("sudo",)
    initiators = {}
    for name in names:
        node_role = set(roles or ()) or node_roles(cloud, name, oned_ok)
        if not node_role:
            checks.append(_fail("roles", name, f"{name} is neither the ISCSI_HOST of an iscsi_lvm "
                                "datastore nor an OpenNebula host", "give --role storage,host, "
                                "or add it to oned (onehost create / onedatastore update)"))
            continue
        probe = probe_facts(cloud, name)
        if probe.get("unreachable"):
            helper = {"unreachable": probe["unreachable"]}
        else:
            helper = helper_facts(cloud, name, node_role, probe.get("node_conf"), oned_ok)
        checks.extend(judge_node(name, node_role, helper, probe, in_sudo))
        if "host" in node_role:
            answer = helper.get("initiator") or {}
            initiators[name] = answer.get("iqn")
    if oned_ok and initiators:
        recorded = {h.name: h.initiator for h in cloud.hosts()}
        checks.extend(judge_initiators(initiators, recorded))
    return checks
