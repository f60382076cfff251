"""Host commands: iSCSI sessions to the storage node and the links VMs use (tm_iscsi.node.targets
does the work; these are its command-line faces)."""

from . import iscsi, paths
from .chap import add_option as chap_option, credentials as chap_credentials
from .cli import checked_command as command
from .naming_args import int_range as _int_range
from .targets import (IQN, LINK, SERIAL, _link_verdict, _portal, attach_target,  # noqa: F401
                      detach_target, replace_symlink)



@command("initiator", "this host's iSCSI initiator name")
def initiator(args):
    return {"iqn": iscsi.initiator_name()}


def _devices(session):
    return [{"lun": d.lun, "device": d.device, "serial": iscsi.unit_serial(d.name)}
            for d in session.disks]


@command("sessions", "iSCSI sessions of this host with their disks")
def sessions(args):
    return {"sessions": [{"iqn": s.iqn, "portal": s.portal, "sid": s.sid, "state": s.state,
                          "devices": _devices(s)} for s in iscsi.sessions()]}


# -- attach ------------------------------------------------------------------------------------

@command("attach", "log in to a target (or reuse the session) and link its checked LUN")
def attach(args):
    if args.link:
        # The link goes inside the datastores directory, nowhere else: checked before a login.
        paths.checked(args.link, leaf_may_be_link=True)
    chap = chap_credentials(args)
    return attach_target(args.portal, args.iqn, args.serial, chap, args.timeout, args.link,
                         args.lun)


def _target_options(p):
    p.add_argument("--portal", required=True, type=_portal, help="storage node HOST[:PORT]")
    p.add_argument("--iqn", required=True, type=IQN, help="target IQN")
    p.add_argument("--link", type=LINK, help="symlink to (re)point at the LUN")


def _attach_options(p):
    _target_options(p)
    p.add_argument("--serial", required=True, type=SERIAL, help="expected unit serial")
    p.add_argument("--lun", type=_int_range(0, 255, "LUN"), default=0)
    chap_option(p)
    p.add_argument("--timeout", type=_int_range(1, 3600, "timeout in seconds"), default=30)


attach.configure = _attach_options


# -- detach ------------------------------------------------------------------------------------

@command("detach", "unlink, flush and drop a target's disks, log out, forget the record")
def detach(args):
    if args.link:
        paths.checked(args.link, leaf_may_be_link=True)
    iscsi.parse_portal(args.portal)
    return detach_target(args.iqn, args.link)


detach.configure = _target_options
