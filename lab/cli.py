"""`lab/lab`: the command line of the lab."""
import argparse
import json
import os
import sys

from . import api, config, nodes, ssh


def _lab_name():
    return f"lab {config.LAB_ID}" if config.LAB_ID else "the lab"


def _require_up(node_name):
    """ssh needs the lab's ssh_config and the node running: say so, not ssh's own error."""
    node = config.node(node_name)
    if not config.SSH_CONFIG.exists() or not nodes.pid_of(node):
        env = f"TM_ISCSI_LAB_ID={config.LAB_ID} " if config.LAB_ID else ""
        raise SystemExit(f"lab: {node_name} of {_lab_name()} is not up (start it with "
                         f"{env}lab/lab up; lab/lab status lists its nodes)")


def main(argv=None):
    try:
        return _main(argv)
    except BrokenPipeError:
        # `lab/lab status --json | head`: the reader has gone, nothing to report.
        sys.stderr.close()
        return 0


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="lab", description=(
        "The tm_iscsi lab: nodes storage (LVM thin + LIO target), host1 and host2 (open-iscsi, "
        "dm-cache), as user-mode-linux processes on a bridge in network namespace "
        f"{config.NETNS}."))
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build the image if needed and boot every node")
    sub.add_parser("down", help="stop every node, remove the namespace, taps and run files")
    st = sub.add_parser("status", help="state, pid and memory of each node")
    st.add_argument("--json", action="store_true")
    p = sub.add_parser("ssh", help="interactive shell on a node")
    p.add_argument("node")
    p = sub.add_parser("exec", help="run a command on a node; exit code and output pass through")
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("reset", help="wipe VGs, LIO config, sessions and dm devices on all nodes")
    p = sub.add_parser("crash", help="kill a node at once, as a power cut (its disks are kept)")
    p.add_argument("node")
    p = sub.add_parser("boot", help="boot a stopped or crashed node with the disks it had")
    p.add_argument("node")
    p = sub.add_parser("reboot", help="crash then boot a node")
    p.add_argument("node")
    sub.add_parser("image", help="build (or find) the cached node root image and print its path")
    args = parser.parse_args(argv)

    if args.cmd == "up":
        timings = api.up()
        api.log("up: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        api.log(f"try: lab/lab ssh storage   (ssh config: {config.SSH_CONFIG})")
    elif args.cmd == "down":
        api.down()
    elif args.cmd == "status":
        rows = api.status()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'node':8} {'role':8} {'ip':14} {'state':8} {'pid':>8} {'rss MiB':>8}")
            for r in rows:
                print(f"{r['name']:8} {r['role']:8} {r['ip']:14} {r['state']:8} "
                      f"{r['pid'] or '-':>8} {r['rss_mib']:>8}")
    elif args.cmd == "ssh":
        _require_up(args.node)
        os.execvp("ssh", ssh.ssh_argv(args.node, tty=True))
    elif args.cmd == "exec":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("exec needs a command after --")
        _require_up(args.node)
        os.execvp("ssh", ssh.ssh_argv(args.node, command))
    elif args.cmd == "reset":
        api.reset()
    elif args.cmd == "crash":
        api.crash(args.node)
    elif args.cmd == "boot":
        api.boot(args.node)
    elif args.cmd == "reboot":
        api.reboot(args.node)
    elif args.cmd == "image":
        from . import hostdeps, image
        hostdeps.ensure()
        print(image.ensure_image())
    return 0


if __name__ == "__main__":
    sys.exit(main())
