"""Facts from the nodes for the ownership rules, and the removal of what they find.

A node that does not answer is a problem to report, never a reason to conclude: its objects are
left out of the facts, and ownership.find_orphans then decides nothing from them."""
from ..errors import DriverError
from . import ownership

# Links are looked for without the node helper: listing a directory needs no root.
_FIND_LINKS = ('for d in "$@"; do [ -d "$d" ] && find "$d" -mindepth 2 -maxdepth 2 -type l '
               '-name "disk.*" -printf "%p\\t%l\\n"; done; true')


def storage_facts(cloud, problems, hosts=None):
    facts = []
    for host in cloud.storage_hosts():
        if hosts is not None and host not in hosts:
            continue
        groups = [g for g in cloud.storage_groups() if g.host == host]
        node = cloud.node(host)
        vgs = {}
        for group in groups:
            try:
                vgs[group.vg] = node.call("lv-list", "--vg", group.vg).get("lvs", [])
            except DriverError as err:
                problems.append(f"{host}: lv-list of {group.vg} failed: {err}")
        try:
            exports = node.call("exports").get("targets", [])
        except DriverError as err:
            problems.append(f"{host}: exports failed: {err}")
            exports = None
        bases = tuple(dict.fromkeys(b for g in groups for b in g.iqn_bases))
        facts.append(ownership.StorageFacts(host, vgs, exports, bases))
    return facts


def links_on(cloud, host, problems):
    dirs = cloud.system_dirs()
    if not dirs:
        return []
    result = cloud.shell(host, ["sh", "-c", _FIND_LINKS, "sh", *dirs])
    if result.returncode != 0:
        lines = (result.stderr or "").strip().splitlines()
        problems.append(f"{host}: cannot list disk links: {lines[-1] if lines else 'ssh failed'}")
        return None
    links = []
    for line in result.stdout.splitlines():
        path, _, target = line.partition("\t")
        if path:
            links.append((path, target))
    return links


def host_facts(cloud, problems, names=None, with_links=True):
    facts = []
    for host in cloud.hosts():
        if names is not None and host.name not in names:
            continue
        node = cloud.node(host.name)
        try:
            sessions = node.call("sessions").get("sessions", [])
        except DriverError as err:
            problems.append(f"{host.name}: sessions failed: {err}")
            facts.append(ownership.HostFacts(host.name, host.initiator, None, None))
            continue
        initiator = host.initiator or cloud.live_initiator(host.name)
        links = links_on(cloud, host.name, problems) if with_links else None
        try:
            stacks = node.call("cache-status").get("stacks", [])
        except DriverError as err:
            problems.append(f"{host.name}: cache-status failed: {err}")
            stacks = None
        facts.append(ownership.HostFacts(host.name, initiator, sessions, links, stacks))
    return facts


def orphans(cloud, host_names=None, focus_vm=None):
    """(findings, problems). `host_names` limits which hosts are asked (None: every host)."""
    problems = []
    own = ownership.ownership(cloud.vms(), cloud.images(), cloud.volumes_of, focus_vm)
    storages = storage_facts(cloud, problems)
    hosts = host_facts(cloud, problems, host_names)
    findings = ownership.find_orphans(own, storages, hosts)
    problems.extend(cloud.warnings)
    return findings, problems


def _portal_of(cloud, finding):
    if finding.detail.get("portal"):
        return finding.detail["portal"]
    groups = cloud.storage_groups()
    return groups[0].portal if groups else None


def remove(cloud, finding):
    """Remove one finding through the node helper; the helper's answer."""
    d = finding.detail
    node = cloud.node(finding.node)
    if finding.kind == "link":
        return node.call("path-remove", "--path", d["path"])
    if finding.kind == "stack":
        return node.call("stack-teardown", "--name", d["name"],
                         "--flush" if d.get("flush") else "--drop")
    if finding.kind == "session":
        portal = _portal_of(cloud, finding)
        if not portal:
            raise DriverError("no portal known for the session; log it out with iscsiadm")
        return node.call("detach", "--portal", portal, "--iqn", d["iqn"])
    if finding.kind in ("acl", "target"):
        if not d.get("vg"):
            raise DriverError(f"{finding.name} is not named after an LV; remove it with "
                              f"targetcli on {finding.node}")
        args = ["--vg", d["vg"], "--lv", d["lv"], "--iqn-base", d["iqn_base"]]
        if finding.kind == "acl":
            args += ["--initiator", d["initiator"]]
        return node.call("unexport", *args)
    if finding.kind == "lv":
        args = ["--vg", d["vg"], "--lv", d["lv"]]
        if d.get("tagged"):
            args += ["--require-tag", "tm_iscsi"]
        return node.call("lv-remove", *args)
    raise DriverError(f"cannot remove a {finding.kind}")


def clean(cloud, findings):
    """Remove findings in dependency order (links, stacks, sessions, ACLs, targets, LVs); a failure is
    recorded and the rest goes on. [(finding, error or None)]."""
    done = []
    for finding in sorted(findings, key=lambda f: ownership.KINDS.index(f.kind)):
        try:
            remove(cloud, finding)
            done.append((finding, None))
        except DriverError as err:
            done.append((finding, str(err)))
    return done
