"""`tm-iscsi`: the administrator's command line for an iscsi_lvm cloud.

    tm-iscsi status                        datastores, thin pools, exports, sessions, caches
    tm-iscsi doctor [--node NODE]          what is missing or misconfigured, with the fix
    tm-iscsi orphans [--clean]             what no VM or image owns (removed with --clean)
    tm-iscsi cache-stats [--host HOST]     read caches and write-back stacks per host
    tm-iscsi image import FILE|URL --datastore ID [--name N]
    tm-iscsi image export IMAGE_ID FILE [--format raw|qcow2|tar.gz]
    tm-iscsi image extract IMAGE_ID PATH --out FILE.tar.gz [--partition N]
    tm-iscsi image overlay IMAGE_ID DIR|FILE.tar.gz --at PATH --as NAME [--partition N]
    tm-iscsi smoke-test --template ID      a VM through its life, checked on its host
    tm-iscsi checkpoint [VM ...] [--due]   checkpoint running VMs' write-back disks
    tm-iscsi host-lost HOST                a fenced host's write-back disks back to their
                                           checkpoints, usable elsewhere
    tm-iscsi estimate --template ID|--image ID   per host, what placing the VM there would
                                           cost given what the host's caches hold
    tm-iscsi deploy --template ID|--image ID --count N [--hosts H1,H2] [--terminate-after]
                                           N VMs at once, followed to RUNNING

Every command takes --json (the data, for scripts) instead of tables. A failure is one line on
stderr and a non-zero exit."""
import argparse
import sys

from ..errors import DriverError
from . import (checkpoint, doctor, fsimages, images, inventory, massdeploy, output, placement,
               smoke, status)
from .cliutil import Parser as _Parser, run

PROG = "tm-iscsi"


def _positive(value):
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _vm_source(sub_parser, image_help):
    what = sub_parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", type=_positive, metavar="ID", help="a VM template")
    what.add_argument("--image", type=_positive, metavar="ID", help=image_help)


def parser():
    # --json is taken before or after the sub-command; SUPPRESS keeps a sub-command's own
    # default from overriding `tm-iscsi --json status`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of tables")
    p = _Parser(prog=PROG, description="administration of the tm_iscsi (iscsi_lvm) driver")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("status", parents=[common], help="datastores, thin pools, exports, sessions "
                   "and caches")
    d = sub.add_parser("doctor", parents=[common], help="what is missing or misconfigured, "
                       "each with its fix")
    d.add_argument("--node", help="check this node only (not the front-end)")
    d.add_argument("--role", help="the node's roles (storage,host) when oned cannot tell")
    d.add_argument("--oned-conf", default=doctor.ONED_CONF,
                   help=f"oned's configuration to check (default {doctor.ONED_CONF})")
    d.add_argument("--remotes", default=doctor.REMOTES,
                   help=f"oned's remotes tree, where the driver's scripts are (default "
                   f"{doctor.REMOTES})")
    o = sub.add_parser("orphans", parents=[common], help="LVs, targets, ACLs, sessions and "
                       "links no VM or image owns")
    o.add_argument("--clean", action="store_true", help="remove them")
    o.add_argument("--host", action="append", help="ask only this host (repeatable)")
    c = sub.add_parser("cache-stats", parents=[common], help="read caches and write-back "
                       "stacks per host and image")
    c.add_argument("--host", action="append", help="only this host (repeatable)")
    i = sub.add_parser("image", parents=[common], help="import, export, extract from or "
                       "overlay onto an image")
    isub = i.add_subparsers(dest="image_command", required=True, parser_class=_Parser)
    imp = isub.add_parser("import", parents=[common], help="register FILE or URL as an image "
                          "(oned copies it with the datastore's cp)")
    imp.add_argument("source", metavar="FILE|URL")
    imp.add_argument("--datastore", required=True, type=_positive, help="image datastore id")
    imp.add_argument("--name", help="the image's name in oned (default: the file name "
                     "without its extensions)")
    imp.add_argument("--type", default="OS", choices=images.IMAGE_TYPES,
                     help="the image's TYPE in oned (default OS)")
    imp.add_argument("--persistent", action="store_true", help="register it as a persistent "
                     "image (one VM at a time writes the image itself)")
    imp.add_argument("--no-wait", action="store_true", help="return once oned has the image")
    imp.add_argument("--timeout", type=_positive, default=3600,
                     help="seconds to wait for oned's copy to end (default 3600)")
    exp = isub.add_parser("export", parents=[common], help="write an image's bytes to FILE")
    exp.add_argument("image", type=_positive, metavar="IMAGE_ID")
    exp.add_argument("file", metavar="FILE")
    exp.add_argument("--format", default="raw", choices=images.FORMATS)
    exp.add_argument("--force", action="store_true", help="overwrite FILE")
    ext = isub.add_parser("extract", parents=[common], help="a directory of an image's "
                          "filesystem as FILE.tar.gz (read from a thin snapshot, offline)")
    ext.add_argument("image", type=_positive, metavar="IMAGE_ID")
    ext.add_argument("path", metavar="PATH", help="absolute path inside the image")
    ext.add_argument("--out", required=True, metavar="FILE.tar.gz")
    ext.add_argument("--partition", type=_positive, default=0, metavar="N",
                     help="the partition holding the filesystem (default: the whole disk)")
    ext.add_argument("--force", action="store_true", help="overwrite FILE")
    ovl = isub.add_parser("overlay", parents=[common], help="a new image: IMAGE with a "
                          "directory or tar.gz written under PATH (offline)")
    ovl.add_argument("image", type=_positive, metavar="IMAGE_ID")
    ovl.add_argument("source", metavar="DIR|FILE.tar.gz")
    ovl.add_argument("--at", required=True, metavar="PATH", help="where, inside the image")
    ovl.add_argument("--as", dest="new_name", required=True, metavar="NAME",
                     help="the new image's name in oned")
    ovl.add_argument("--partition", type=_positive, default=0, metavar="N",
                     help="the partition holding the filesystem (default: the whole disk)")
    ovl.add_argument("--timeout", type=_positive, default=3600,
                     help="seconds to wait for oned's clone (default 3600)")
    s = sub.add_parser("smoke-test", parents=[common], help="instantiate a VM, check its disks "
                       "on its host, terminate it")
    s.add_argument("--template", required=True, type=_positive, help="VM template id")
    s.add_argument("--name", help="the test VM's name (default tm-iscsi-smoke-<time>)")
    s.add_argument("--timeout", type=_positive, default=600,
                   help="seconds for each wait (default 600)")
    s.add_argument("--keep", action="store_true", help="leave the VM running")
    k = sub.add_parser("checkpoint", parents=[common], help="a crash-consistent checkpoint of "
                       "running VMs' write-back disks on the storage node")
    k.add_argument("vms", nargs="*", type=_positive, metavar="VM_ID")
    k.add_argument("--due", action="store_true", help="every running VM whose last checkpoint "
                   "is older than WRITEBACK_CHECKPOINT (what the front-end's timer runs)")
    h = sub.add_parser("host-lost", parents=[common], help="a host that never comes back: its "
                       "write-back disks back to their last checkpoint, usable on other hosts")
    h.add_argument("host", metavar="HOST")
    h.add_argument("--force", action="store_true", help="even if oned does not show the host "
                   "in ERROR or DISABLED, or its fencing cannot be checked")
    h.add_argument("--without-checkpoint", action="store_true", help="a disk with no checkpoint "
                   "is used as the storage node has it (NOT crash-consistent)")
    e = sub.add_parser("estimate", parents=[common], help="per host, the cost of placing a VM "
                       "there given what its caches hold, best first")
    _vm_source(e, "one image (a VM of it)")
    e.add_argument("--live", action="store_true", help="ask each host now, not the figures "
                   "its probe last gave oned (what the scheduler sees)")
    m = sub.add_parser("deploy", parents=[common], help="N VMs of a template or an image at "
                       "once, followed to RUNNING, with their times and the cache figures")
    _vm_source(m, "VMs of one image (128 MiB, one VCPU, the image as their only disk)")
    m.add_argument("--count", type=_positive, required=True, metavar="N")
    m.add_argument("--hosts", type=lambda v: [h for h in v.split(",") if h], default=[],
                   metavar="H1,H2", help="deploy round-robin on these hosts instead of letting "
                   "the scheduler place them")
    m.add_argument("--wait", dest="wait", action="store_true", default=True,
                   help="follow them to RUNNING (the default)")
    m.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once oned has the VMs")
    m.add_argument("--terminate-after", action="store_true",
                   help="terminate them once all are RUNNING or failed (a benchmark's run)")
    m.add_argument("--timeout", type=_positive, default=1800,
                   help="seconds to wait for RUNNING, and again for DONE (default 1800)")
    return p


# -- commands ----------------------------------------------------------------------------------

def cmd_status(cloud, args, out):
    data = status.gather(cloud)
    if args.json:
        output.emit_json(data, out)
        return 1 if data["problems"] else 0
    output.table(["DS", "NAME", "TYPE", "STORAGE", "VG/POOL", "CACHE_MODE", "ERROR"],
                 [[d["id"], d["name"], d["type"], d["storage"],
                   f"{d['vg']}/{d['pool']}" if d["vg"] else None, d["cache_mode"], d["error"]]
                  for d in data["datastores"]], out)
    output.heading("THIN POOLS", out)
    output.table(["STORAGE", "VG/POOL", "DATASTORES", "DATA", "DATA USED", "METADATA", "VG FREE"],
                 [[p["storage"], f"{p['vg']}/{p['pool']}", ",".join(map(str, p["datastores"])),
                   output.percent(p.get("data_percent")),
                   f"{output.size(p.get('data_used_bytes'))} of "
                   f"{output.size(p.get('data_total_bytes'))}" if "error" not in p else p["error"],
                   output.percent(p.get("metadata_percent")),
                   output.size(p.get("vg_free_bytes"))] for p in data["pools"]], out)
    output.heading("EXPORTS", out)
    if not data["exports"]:
        print("none: no target is exported (no VM disk is attached)", file=out)
    else:
        output.table(["STORAGE", "TARGET", "INITIATORS", "SESSIONS"],
                     [[e["storage"], e["iqn"],
                       ", ".join(i["host"] or i["iqn"] for i in e["initiators"]) or "(none)",
                       ", ".join(e["sessions"]) or "(none)"] for e in data["exports"]], out)
    output.heading("HOSTS", out)
    output.table(["HOST", "STATE", "INITIATOR", "SESSIONS", "CACHE"],
                 [[h["name"], h["state"], h["initiator"],
                   len(h["sessions"]) if h["sessions"] is not None else h.get("error"),
                   _cache_summary(h["cache"])] for h in data["hosts"]], out)
    if data["writeback"]:
        output.heading("WRITE-BACK DISKS (what losing the host would cost)", out)
        _writeback_table(data["writeback"], out)
    for problem in data["problems"]:
        print(f"warning: {problem}", file=out)
    return 1 if data["problems"] else 0


def _writeback_table(rows, out):
    output.table(["HOST", "DISK", "DIRTY", "LAST CHECKPOINT"],
                 [[r["host"], r["name"],
                   f"{r['dirty_mib']} MiB" if r.get("dirty_mib") is not None else None,
                   f"{checkpoint.age_text(r['checkpoint_age_s'])} ago"
                   if r.get("checkpoint_age_s") is not None else "none"] for r in rows], out)
    print("DIRTY: written on the host only; LAST CHECKPOINT: what a lost host leaves on the "
          "storage node (tm-iscsi host-lost)", file=out)


def _cache_summary(cache):
    if cache is None:
        return None
    if cache.get("installed") is False:
        return "no cache layer"
    if "error" in cache:
        return f"error: {cache['error']}"
    if cache.get("present") is False:
        return f"cache VG {cache.get('vg')} missing"
    return (f"{len(cache.get('read_caches') or [])} read cache(s), "
            f"{len(cache.get('stacks') or [])} stack(s), "
            f"{output.size(cache.get('free_bytes'))} free")


def cmd_doctor(cloud, args, out):
    roles = set(r.strip() for r in args.role.split(",")) if args.role else None
    if roles and not roles <= {"storage", "host"}:
        raise DriverError(f"--role takes storage, host or storage,host, not {args.role}")
    checks = doctor.run(cloud, args.node, roles, args.oned_conf, args.remotes)
    failed = [c for c in checks if not c.ok]
    if args.json:
        output.emit_json({"checks": [c.as_dict() for c in checks], "problems": len(failed)}, out)
    else:
        output.table(["CHECK", "NODE", "RESULT", "DETAIL"],
                     [[c.check, c.node, "ok" if c.ok else "FAIL", c.detail] for c in checks], out)
        if failed:
            output.heading("TO FIX", out)
            for c in failed:
                print(f"- {c.check} ({c.node}): {c.fix}", file=out)
    if failed:
        print(f"{PROG}: {len(failed)} problem(s) found", file=sys.stderr)
    return 1 if failed else 0


def cmd_orphans(cloud, args, out):
    findings, problems = inventory.orphans(cloud, args.host)
    cleaned = inventory.clean(cloud, findings) if args.clean else None
    output.findings_report(findings, problems, cleaned, args.json, out,
                           empty="no orphans: every tm_iscsi object belongs to a VM or image")
    failed = [e for _f, e in cleaned or [] if e]
    if failed:
        raise DriverError(f"{len(failed)} orphan(s) could not be removed; first: {failed[0]}")
    return 1 if problems else 0


def cmd_cache_stats(cloud, args, out):
    data = status.cache_stats(cloud, args.host)
    if args.json:
        output.emit_json(data, out)
        return 1 if data["problems"] else 0
    output.table(["HOST", "CACHE", "VG", "SIZE", "FREE"],
                 [[h["host"], h["state"], h["vg"], output.size(h["size_bytes"]),
                   output.size(h["free_bytes"])] for h in data["hosts"]], out)
    if data["read_caches"]:
        output.heading("READ CACHES (per host and image)", out)
        output.table(["HOST", "IMAGE", "SIZE", "LOCAL", "READ HITS", "MISSES", "HIT%",
                      "HIT% ALL", "VMS"],
                     [[r["host"], r["image"] if r["image"] is not None else r["key"],
                       output.size(r["size_bytes"]), output.percent(r["hydrated_percent"]),
                       r["read_hits"], r["read_misses"], output.percent(r["hit_percent"]),
                       output.percent(r.get("hit_percent_total")),
                       r["refs"]] for r in data["read_caches"]], out)
        print("read hits and misses: read requests since the host's last warm-up; HIT% ALL: "
              "since the read cache was made", file=out)
    wb_rows = [s for s in data["stacks"] if "checkpoint_age_s" in s]
    if wb_rows:
        output.heading("WRITE-BACK DISKS (what losing the host would cost)", out)
        _writeback_table(wb_rows, out)
    if data["stacks"]:
        output.heading("VM DISK STACKS", out)
        output.table(["HOST", "DISK", "MODE", "DIRTY", "READ HIT%", "WRITE HITS", "WRITE MISSES"],
                     [[s["host"], s["name"], s["mode"], s["dirty_blocks"],
                       output.percent(s["read_hit_percent"]), s["write_hits"],
                       s["write_misses"]] for s in data["stacks"]], out)
    return 1 if data["problems"] else 0


def cmd_image(cloud, args, out):
    if args.image_command == "import":
        result = images.import_image(cloud, args.source, args.datastore, args.name, args.type,
                                     args.persistent, wait=not args.no_wait,
                                     timeout=args.timeout)
        text = (f"image {result['id']} ({result['name']}) in datastore {result['datastore']}: "
                f"{result['state']}" + (f", {result['source']}" if result["source"] else ""))
    elif args.image_command == "extract":
        result = fsimages.extract(cloud, args.image, args.path, args.out, args.partition,
                                  args.force)
        text = (f"image {result['image']}: {result['path']} -> {result['file']} "
                f"({result['bytes']} bytes)")
    elif args.image_command == "overlay":
        result = fsimages.overlay(cloud, args.image, args.source, args.at, args.new_name,
                                  args.partition, timeout=args.timeout)
        text = (f"image {result['image']} ({result['name']}): image {result['from']} with "
                f"{result['files']} file(s), {result['bytes']} bytes written at "
                f"{result['at']} ({result['fs']})")
    else:
        result = images.export_image(cloud, args.image, args.file, args.format, args.force)
        text = (f"image {result['image']} ({result['lv']}, {result['image_bytes']} bytes) -> "
                f"{result['file']} ({result['format']}, {result['file_bytes']} bytes)")
    if args.json:
        output.emit_json(result, out)
    else:
        print(text, file=out)
    return 0


def cmd_smoke_test(cloud, args, out):
    log = (lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr))
    try:
        result = smoke.smoke_test(cloud, args.template, args.name, args.timeout, args.keep,
                                  log=log)
    except smoke.SmokeFailure as err:
        if args.json:
            output.emit_json({"ok": False, "error": str(err),
                              "steps": getattr(err, "steps", [])}, out)
        raise
    if args.json:
        output.emit_json(result, out)
    else:
        output.table(["STEP", "RESULT", "AT", "DETAIL"],
                     [[s["step"], "ok" if s["ok"] else "FAILED", f"{s['seconds']}s", s["detail"]]
                      for s in result["steps"]], out)
    return 0


def cmd_checkpoint(cloud, args, out):
    if bool(args.vms) == bool(args.due):
        raise DriverError("give VM ids or --due (not both)")
    if args.due:
        targets = checkpoint.due(cloud)
    else:
        targets = checkpoint.running_writeback_vms(cloud, set(args.vms))
        missing = sorted(set(args.vms) - {t.vm.id for t in targets})
        if missing:
            raise DriverError(f"VM {missing[0]} is not running with write-back disks on an "
                              "iscsi_lvm system datastore: nothing to checkpoint")
    done, failed = [], []
    for found in targets:
        try:
            done.append(checkpoint.checkpoint(cloud, found))
        except DriverError as err:
            failed.append({"vm": found.vm.id, "host": found.host, "error": str(err)})
    if args.json:
        output.emit_json({"checkpoints": done, "failed": failed}, out)
    else:
        output.table(["VM", "HOST", "DISK", "DRAINED", "CUT", "TOOK"],
                     [[c["vm"], c["host"], d["disk_id"], f"{d['drained_mib']} MiB",
                       f"{c['stall_seconds']}s" + (" (held)" if c["held"] else ""),
                       f"{c['seconds']}s"] for c in done for d in c["disks"]], out)
        for item in failed:
            print(f"VM {item['vm']} on {item['host']}: NOT checkpointed: {item['error']}",
                  file=out)
    if failed and not done and len(failed) == 1:
        raise DriverError(failed[0]["error"])
    return 1 if failed else 0


def cmd_host_lost(cloud, args, out):
    report = checkpoint.host_lost(cloud, cloud.host(args.host), args.force,
                                  args.without_checkpoint)
    if args.json:
        output.emit_json({"host": report.host, "disks": report.disks, "errors": report.errors,
                          "ok": report.ok}, out)
    else:
        output.table(["STORAGE", "DISK", "RESULT", "DATA AGE (LOSS WINDOW)"],
                     [[d["storage"], f"{d['vg']}/{d['lv']}",
                       ("back to checkpoint" if d.get("checkpoint") else "kept as it was")
                       if d.get("recovered") else f"NOT recovered: {d.get('reason')}",
                       checkpoint.age_text(d.get("age_seconds"))] for d in report.disks], out)
        if not report.disks and not report.errors:
            print(f"{report.host} held no write-back data of any disk: nothing to recover",
                  file=out)
        for where, error in sorted(report.errors.items()):
            print(f"{where}: NOT recovered: {error}", file=out)
    return 0 if report.ok else 1


def cmd_estimate(cloud, args, out):
    disks = placement.disks_of_template(cloud, args.template) if args.template is not None \
        else placement.disks_of_image(cloud, args.image)
    if not disks:
        raise DriverError("no disk of an iscsi_lvm image to estimate for")
    data = placement.estimate(cloud, disks, live=args.live)
    if args.json:
        output.emit_json(data, out)
        return 0
    print("; ".join(f"image {d.image_id} ({d.name}, {d.size_mib} MiB, {d.mode})" for d in disks),
          file=out)
    output.table(["RANK", "HOST", "HOLDS", "OVER ISCSI", "CACHE NEEDED", "CACHE FREE AFTER",
                  "FITS", "FIGURES"],
                 [[r["rank"], r["host"], f"{r['cached_mib']} MiB", f"{r['iscsi_read_mib']} MiB",
                   f"{r['cache_need_mib']} MiB",
                   "?" if r["cache_free_after_mib"] is None else
                   f"{r['cache_free_after_mib']} MiB", r["fits"],
                   r["state"] if r["age_s"] is None else
                   f"{r['state']}, {checkpoint.age_text(r['age_s'])} old"]
                  for r in data["hosts"]], out)
    if data["sched_rank"]:
        print(f'to have the scheduler prefer these hosts: SCHED_RANK = "{data["sched_rank"]}" '
              "(in the VM template, or CACHE_AWARE_PLACEMENT = YES on the image datastore)",
              file=out)
    return 0


def cmd_deploy(cloud, args, out):
    def progress(running, failed, total):
        done = (running + failed) * 25 // max(total, 1)
        line = f"deploy [{'#' * done}{'.' * (25 - done)}] {running}/{total} running, {failed} failed"
        if line != getattr(progress, "last", None):
            progress.last = line
            print(line, file=sys.stderr, flush=True)

    report = massdeploy.deploy(cloud, args.count, args.template, args.image, args.hosts,
                               wait=args.wait, terminate_after=args.terminate_after,
                               timeout=args.timeout, progress=progress)
    if args.json:
        output.emit_json(report.as_json(), out)
        return 1 if report.failed else 0
    output.table(["VM", "NAME", "HOST", "STATE", "SECONDS", "ERROR"],
                 [[t.vm_id, t.name, t.host or "-", t.state,
                   "-" if t.seconds is None else t.seconds, t.error or ""]
                  for t in report.vms], out)
    summary = report.as_json()
    if args.wait or args.terminate_after:
        print(f"{summary['running']} of {len(report.vms)} RUNNING, {summary['failed']} failed; "
              f"seconds to RUNNING: first {summary['seconds']['first']}, median "
              f"{summary['seconds']['median']}, last {summary['seconds']['last']}", file=out)
    if report.caches:
        output.heading("CACHES OF THE HOSTS USED", out)
        output.table(["HOST", "READ CACHES", "READ HITS", "MISSES", "HIT%", "CACHE FREE"],
                     [[c["host"], c["read_caches"], c["read_hits"], c["read_misses"],
                       output.percent(c["hit_percent"]), f"{c['free_mib']} MiB"]
                      for c in report.caches], out)
    if report.terminated:
        print(f"terminated: all {len(report.vms)} VMs are DONE", file=out)
    return 1 if report.failed else 0


COMMANDS = {"status": cmd_status, "doctor": cmd_doctor, "orphans": cmd_orphans,
            "cache-stats": cmd_cache_stats, "image": cmd_image, "smoke-test": cmd_smoke_test,
            "checkpoint": cmd_checkpoint, "host-lost": cmd_host_lost, "estimate": cmd_estimate,
            "deploy": cmd_deploy}


def main(argv=None, cloud=None, out=None):
    return run(PROG, parser(), COMMANDS, argv, cloud, out)


def console():
    sys.exit(main())
