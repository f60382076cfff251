"""`tm-iscsi-hook`: the OpenNebula hooks of tm_iscsi and their registration.

    tm-iscsi-hook fence [TEMPLATE | --host NAME] [--force] [--json]
    tm-iscsi-hook leftovers [TEMPLATE | --vm ID] [--clean] [--json]
    tm-iscsi-hook place [TEMPLATE | --vm ID] [--json]
    tm-iscsi-hook register [--command PATH] [--clean-leftovers] [--no-initiators] [--dry-run]
    tm-iscsi-hook record-initiators [HOST ...] [--dry-run]

oned runs the first three with the base64 XML of the host or VM ($TEMPLATE); an administrator
can run them by name. Output goes to stdout (oned keeps it in the hook's HOOKLOG); a failure is
one line on stderr and a non-zero exit."""
import sys

from tm_iscsi.admin import checkpoint as checkpoint_mod, inventory, output, placement
from tm_iscsi.admin.cliutil import Parser as _Parser, run
from tm_iscsi.admin.views import Host
from tm_iscsi.errors import DriverError
from tm_iscsi.one.errors import OneError
from tm_iscsi.one.objects import VirtualMachine

from . import fence as fence_mod, leftovers as leftovers_mod, register as register_mod
from .template import decode

PROG = "tm-iscsi-hook"


def parser():
    p = _Parser(prog=PROG, description="OpenNebula hooks of tm_iscsi")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    f = sub.add_parser("fence", help="HOST ERROR: revoke the host's ACLs and sessions on every "
                       "storage node")
    f.add_argument("template", nargs="?", help="$TEMPLATE: base64 HOST XML ('-': stdin)")
    f.add_argument("--host", help="the host's name or id, instead of $TEMPLATE")
    f.add_argument("--force", action="store_true", help="fence a host that is not in ERROR")
    f.add_argument("--json", action="store_true")
    lo = sub.add_parser("leftovers", help="VM DONE: what the VM left behind")
    lo.add_argument("template", nargs="?", help="$TEMPLATE: base64 VM XML ('-': stdin)")
    lo.add_argument("--vm", type=int, help="the VM's id, instead of $TEMPLATE")
    lo.add_argument("--clean", action="store_true", help="remove what was found")
    lo.add_argument("--json", action="store_true")
    pl = sub.add_parser("place", help="VM PENDING: a SCHED_RANK preferring the hosts that cache "
                        "its images, when their datastore sets CACHE_AWARE_PLACEMENT = YES")
    pl.add_argument("template", nargs="?", help="$TEMPLATE: base64 VM XML ('-': stdin)")
    pl.add_argument("--vm", type=int, help="the VM's id, instead of $TEMPLATE")
    pl.add_argument("--json", action="store_true")
    r = sub.add_parser("register", help="register the hooks with oned (once) and record the "
                       "hosts' initiator names")
    r.add_argument("--command", dest="hook_command",
                   help="absolute path of the installed tm-iscsi-hook (default: found)")
    r.add_argument("--clean-leftovers", action="store_true",
                   help="let the DONE hook remove what it finds, not only report it")
    r.add_argument("--no-initiators", action="store_true",
                   help="do not record ISCSI_INITIATOR in the host templates")
    r.add_argument("--dry-run", action="store_true", help="show what would change")
    r.add_argument("--json", action="store_true")
    ri = sub.add_parser("record-initiators", help="write each host's initiator name into its "
                        "template (ISCSI_INITIATOR)")
    ri.add_argument("hosts", nargs="*")
    ri.add_argument("--dry-run", action="store_true")
    ri.add_argument("--json", action="store_true")
    return p


def _host(cloud, args):
    if args.template:
        given = Host.from_xml(decode(args.template, "HOST"))
        return cloud.host(given.id)
    if args.host:
        return cloud.host(args.host)
    raise DriverError("give the host: $TEMPLATE (as oned does) or --host NAME")


def _vm(cloud, args):
    if args.template:
        event = VirtualMachine.from_xml(decode(args.template, "VM"))
        # The event carries the newest placement only; one.vm.info has every host the VM was
        # on (a DONE VM stays readable), and the older ones may hold leftovers too.
        try:
            return cloud.one.vm_info(event.id)
        except OneError:
            return event
    if args.vm is not None:
        return cloud.one.vm_info(args.vm)
    raise DriverError("give the VM: $TEMPLATE (as oned does) or --vm ID")


def cmd_fence(cloud, args, out):
    host = _host(cloud, args)
    result = fence_mod.fence(cloud, host, force=args.force)
    lost = None
    if result.ok and _recover_on_loss(cloud):
        # WRITEBACK_ON_HOST_LOSS = checkpoint: the host's write-back disks go back to their
        # last checkpoint now, so that the VMs oned restarts elsewhere can use them.
        lost = checkpoint_mod.host_lost(cloud, cloud.host(host.id), force=args.force)
    if args.json:
        output.emit_json({"host": result.host, "initiator": result.initiator,
                          "source": result.source, "recorded": result.recorded,
                          "revoked": result.revoked, "errors": result.errors,
                          "host_lost": None if lost is None else {
                              "disks": lost.disks, "errors": lost.errors, "ok": lost.ok}}, out)
    else:
        fence_mod.report(result, out)
        for disk in lost.disks if lost else ():
            print(f"{disk['storage']}: {disk['vg']}/{disk['lv']}: "
                  f"{checkpoint_mod.recovery_text(disk)}", file=out)
    if not result.ok:
        raise DriverError(f"host {result.host} is NOT fenced on "
                          f"{', '.join(sorted(result.errors))}: its VMs must not run elsewhere "
                          "until it is (fix the storage node's ssh and run the hook again)")
    if lost is not None and not lost.ok:
        where, error = next(iter(sorted(lost.errors.items())), (None, None))
        raise DriverError(f"host {result.host} is fenced, but its write-back disks are not all "
                          f"recovered: {error or 'a disk has no checkpoint'} (tm-iscsi host-lost "
                          f"{result.host})")
    return 0


def _recover_on_loss(cloud):
    return any(e.config is not None and e.is_system and e.config.on_host_loss == "checkpoint"
               for e in cloud.datastores())


def cmd_leftovers(cloud, args, out):
    vm = _vm(cloud, args)
    findings, problems = leftovers_mod.find(cloud, vm)
    cleaned = inventory.clean(cloud, findings) if args.clean else None
    output.findings_report(findings, problems, cleaned, args.json, out,
                           empty=f"VM {vm.id} left nothing behind")
    failed = [e for _f, e in cleaned or [] if e]
    if failed:
        raise DriverError(f"{len(failed)} leftover(s) of VM {vm.id} could not be removed: "
                          f"{failed[0]}")
    return 1 if problems else 0


def cmd_place(cloud, args, out):
    done = placement.place(cloud, _vm(cloud, args))
    if args.json:
        output.emit_json({"vm": done.vm_id, "action": done.action, "sched_rank": done.sched_rank,
                          "images": list(done.images)}, out)
    elif done.action == "not asked":
        print(f"VM {done.vm_id}: no image of a datastore with CACHE_AWARE_PLACEMENT = YES and a "
              "read cache: placement left to the scheduler's default", file=out)
    else:
        print(f"VM {done.vm_id}: SCHED_RANK {done.action}: {done.sched_rank}", file=out)
    return 0


def cmd_register(cloud, args, out):
    command = args.hook_command or register_mod.hook_command()
    if not command:
        raise DriverError("cannot find the installed tm-iscsi-hook; give its absolute path "
                          "with --command")
    try:
        hooks = register_mod.register(cloud.one, command, args.clean_leftovers, args.dry_run)
    except ValueError as err:
        raise DriverError(str(err))
    initiators = [] if args.no_initiators else \
        register_mod.record_initiators(cloud, dry_run=args.dry_run)
    _report_register(hooks, initiators, args, out)
    return 0


def cmd_record_initiators(cloud, args, out):
    rows = register_mod.record_initiators(cloud, args.hosts or None, args.dry_run)
    _report_register([], rows, args, out)
    return 1 if any(action == "unreachable" for _h, _i, action in rows) else 0


def _report_register(hooks, initiators, args, out):
    if args.json:
        output.emit_json({"hooks": [{"name": n, "action": a, "id": i} for n, a, i in hooks],
                          "initiators": [{"host": h, "initiator": i, "action": a}
                                         for h, i, a in initiators]}, out)
        return
    if hooks:
        output.table(["HOOK", "ID", "ACTION"], [[n, i, a] for n, a, i in hooks], out)
    if initiators:
        if hooks:
            print(file=out)
        output.table(["HOST", "ISCSI_INITIATOR", "ACTION"],
                     [[h, i, a] for h, i, a in initiators], out)
    if args.dry_run:
        print("(dry run: nothing was changed)", file=out)


COMMANDS = {"fence": cmd_fence, "leftovers": cmd_leftovers, "place": cmd_place,
            "register": cmd_register,
            "record-initiators": cmd_record_initiators}


def main(argv=None, cloud=None, out=None):
    return run(PROG, parser(), COMMANDS, argv, cloud, out)


def console():
    sys.exit(main())
