"""Ownership and guard tags on the storage node's LVs.

The front-end records facts on the LV itself, where every host and every later action sees them:
which host holds unflushed write-back data of a clone (no other host may use the clone until it
is flushed), which base a clone's region map was made against, a retired base."""
from .cli import checked_command as command
from .errors import NodeError
from .. import naming
from . import confine, locks, lvm, naming_args


@command("lv-tag", "add and remove tags of an LV (idempotent); prints the tags it ends with")
def lv_tag(args):
    with locks.lock("vg", args.vg):
        rep = lvm.report(args.vg)
        lv = rep.lvs.get(args.lv)
        if lv is None:
            raise NodeError(f"LV {args.vg}/{args.lv} does not exist")
        confine.require_owned(lv, "tag")
        if naming.OWNER_TAG in args.delete:
            raise NodeError(f"the {naming.OWNER_TAG} tag is what makes {args.vg}/{args.lv} "
                            "tm_iscsi's; it is never removed")
        add = [t for t in args.add if t not in lv.tags]
        delete = [t for t in args.delete if t in lv.tags]
        # Tags that share a key with an added one (tm_iscsi.wb-host=...) are replaced, so a key
        # holds one value.
        for tag in add:
            key = tag.split("=", 1)[0] + "="
            delete += [t for t in lv.tags if t.startswith(key) and t != tag and "=" in tag
                       and t not in delete]
        if add or delete:
            lvm.change_tags(args.vg, args.lv, add, delete)
        tags = sorted((set(lv.tags) - set(delete)) | set(add))
    return {"vg": args.vg, "lv": args.lv, "tags": tags, "changed": bool(add or delete)}


def _options(p):
    p.add_argument("--vg", required=True, type=confine.storage_vg)
    p.add_argument("--lv", required=True, type=naming_args.LV)
    p.add_argument("--add", action="append", default=[], type=naming_args.TAG)
    p.add_argument("--delete", action="append", default=[], type=naming_args.TAG)


lv_tag.configure = _options
