"""What a host's caches hold, as attributes of the host in oned: the one vocabulary of the host
probe (which writes them), `tm-iscsi estimate` and the placement hook (which read them).

oned keeps what a host's *system* probes print in the host's template (monitord sends it as
SYSTEM_HOST; Host::update_info merges it), every 600 s by default and at `onehost sync` /
`onehost forceupdate`; of the *monitor* probes it keeps only fixed CPU, memory, network and NUMA
figures. The scheduler's SCHED_RANK reads the host template, so the probe is a system probe.

Per image one single attribute, `TM_ISCSI_IMAGE_<id>_MB` (the MiB of that image held on the
host's local disk), because a rank expression can only name single attributes. oned merges a
probe's attributes into the template and never removes one the probe stopped printing, so an
image whose read cache is gone is printed as 0 for a week (remembered in a small file of the
probe user's), then forgotten.

    python -I -m tm_iscsi.hostfacts --helper /usr/sbin/tm-iscsi-node     (the probe's body)
"""
import argparse
import json
import os
import sys
import time

from . import protocol

PREFIX = "TM_ISCSI_"
STATE = PREFIX + "CACHE_STATE"
MEASURED_AT = PREFIX + "CACHE_AT"
FREE_MB = PREFIX + "CACHE_FREE_MB"
TOTAL_MB = PREFIX + "CACHE_TOTAL_MB"
UNUSED_MB = PREFIX + "CACHE_UNUSED_MB"
READ_CACHES = PREFIX + "READ_CACHES"
READ_HITS = PREFIX + "READ_HITS"
READ_MISSES = PREFIX + "READ_MISSES"
WRITEBACK_STACKS = PREFIX + "WRITEBACK_STACKS"
DIRTY_MB = PREFIX + "DIRTY_MB"
IMAGES = PREFIX + "IMAGES"

STATE_OK = "ok"
STATE_NO_VG = "no cache VG"

# How long an image no longer cached is still printed as 0 (so oned's copy drops to 0 even if
# some probe runs were lost), in seconds.
FORGET_AFTER_S = 7 * 24 * 3600
HELPER_TIMEOUT_S = 60
MIB = 1 << 20


def image_attr(image_id):
    return f"{PREFIX}IMAGE_{int(image_id)}_MB"


def rank_expression(image_ids):
    """The SCHED_RANK that prefers the hosts holding most of these images locally."""
    ids = sorted({int(i) for i in image_ids})
    return " + ".join(image_attr(i) for i in ids) if ids else ""


def local_mib_by_image(status):
    """{image id: MiB of it on local disk} from a cache-status answer (the read cache of the
    image's newest base when a host still has an older one)."""
    best = {}
    for cache in status.get("read_caches") or []:
        image_id = protocol.image_id_of_base_key(cache.get("key"))
        regions = int(cache.get("regions") or 0)
        if image_id is None or not regions:
            continue
        local = int(cache.get("size_bytes") or 0) * int(cache.get("hydrated_regions") or 0) \
            // regions // MIB
        seen = best.get(image_id)
        used = float(cache.get("last_used") or 0)
        if seen is None or used > seen[0]:
            best[image_id] = (used, local)
    return {image_id: local for image_id, (_used, local) in best.items()}


def facts(status, now):
    """The host attributes of one cache-status answer: [(name, value)]."""
    if not status.get("present"):
        return [(STATE, STATE_NO_VG), (MEASURED_AT, str(int(now)))]
    read_caches = status.get("read_caches") or []
    stacks = status.get("stacks") or []
    writeback = [s for s in stacks if protocol.has_writeback(s.get("mode") or "")]

    def total(rows, key):
        return sum(int(r.get(key) or 0) for r in rows)

    unused = sum(int(c.get("size_bytes") or 0) for c in read_caches if not c.get("refs"))
    local = local_mib_by_image(status)
    out = [
        (STATE, STATE_OK), (MEASURED_AT, str(int(now))),
        (FREE_MB, str(int(status.get("free_bytes") or 0) // MIB)),
        (TOTAL_MB, str(int(status.get("size_bytes") or 0) // MIB)),
        (UNUSED_MB, str(unused // MIB)),
        (READ_CACHES, str(len(read_caches))),
        (READ_HITS, str(total(read_caches, "read_hits_total"))),
        (READ_MISSES, str(total(read_caches, "read_misses_total"))),
        (WRITEBACK_STACKS, str(len(writeback))),
        (DIRTY_MB, str(total(writeback, "dirty_bytes") // MIB)),
        (IMAGES, " ".join(str(i) for i in sorted(i for i, mib in local.items() if mib > 0))),
    ]
    out += [(image_attr(i), str(mib)) for i, mib in sorted(local.items())]
    return out


def with_forgotten(attributes, remembered, now):
    """`attributes` plus a 0 for each image printed within FORGET_AFTER_S and no longer cached;
    returns (attributes, what to remember: {image id: last time it was cached})."""
    printed = {}
    for name, _value in attributes:
        image_id = _image_of_attr(name)
        if image_id is not None:
            printed[image_id] = now
    keep = dict(printed)
    extra = []
    for image_id, seen in sorted(remembered.items()):
        if image_id in printed or now - seen > FORGET_AFTER_S:
            continue
        keep[image_id] = seen
        extra.append((image_attr(image_id), "0"))
    return attributes + extra, keep


def _image_of_attr(name):
    head, tail = f"{PREFIX}IMAGE_", "_MB"
    if name.startswith(head) and name.endswith(tail):
        middle = name[len(head):-len(tail)]
        if middle.isascii() and middle.isdigit():
            return int(middle)
    return None


def template_lines(attributes):
    """oned template syntax, one attribute per line. oned parses every system probe's output as
    one template and drops all of it if any line does not parse, so a value never carries a
    quote, a backslash or a line break (an error text might)."""
    return [f'{name}="{_plain(value)}"' for name, value in attributes]


def _plain(value):
    return "".join(c if c.isprintable() and c not in '"\\' else "'" if c == '"' else " "
                   for c in str(value))


# -- reading them back from oned ---------------------------------------------------------------

def of_host(template):
    """{"state", "at", "free_mib", "total_mib", "unused_mib", "images": {id: MiB}, ...} from a
    host's TEMPLATE element (what the probe last reported); state None: never reported."""
    def number(name):
        text = (template.findtext(name) or "").strip() if template is not None else ""
        return int(text) if text.isascii() and text.isdigit() else None

    images = {}
    if template is not None:
        for child in template:
            image_id = _image_of_attr(child.tag)
            if image_id is not None and number(child.tag) is not None:
                images[image_id] = number(child.tag)
    state = template.findtext(STATE) if template is not None else None
    return {"state": state, "at": number(MEASURED_AT), "free_mib": number(FREE_MB),
            "total_mib": number(TOTAL_MB), "unused_mib": number(UNUSED_MB),
            "writeback_stacks": number(WRITEBACK_STACKS), "dirty_mib": number(DIRTY_MB),
            "images": images}


# -- the probe ---------------------------------------------------------------------------------

def _memory_path():
    home = os.environ.get("HOME") or "/var/lib/one"
    return os.path.join(home, ".tm_iscsi", "probe-images.json")


def _load_memory(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return {int(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _save_memory(path, remembered):
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        temp = f"{path}.{os.getpid()}"
        with open(temp, "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in sorted(remembered.items())}, f)
        os.replace(temp, path)
    except OSError:
        pass   # zeros for gone images are a courtesy; the figures themselves are printed


def probe(helper, now=None, memory=None):
    """The probe's lines. Never raises: a failing system probe puts the host in ERROR in oned
    (monitord fails the whole SYSTEM_HOST message), which a cache figure is not worth."""
    from .node import run
    from .node.errors import NodeError
    now = time.time() if now is None else now
    try:
        result = run.run(["sudo", "-n", helper, "cache-status"], timeout=HELPER_TIMEOUT_S,
                         what="cache-status")
        status = json.loads(result.stdout)
        attributes = facts(status, now)
    except (NodeError, ValueError, TypeError, AttributeError) as err:
        reason = str(err).splitlines()[-1] if str(err) else type(err).__name__
        return template_lines([(STATE, f"error: {reason[:200]}"), (MEASURED_AT, str(int(now)))])
    path = memory or _memory_path()
    attributes, remembered = with_forgotten(attributes, _load_memory(path), now)
    _save_memory(path, remembered)
    return template_lines(attributes)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tm_iscsi.hostfacts",
                                     description="print this host's cache facts for oned")
    parser.add_argument("--helper", required=True, help="the node helper (run through sudo)")
    parser.add_argument("--memory", help="where to remember the images printed (default: "
                                         "~/.tm_iscsi/probe-images.json)")
    args = parser.parse_args(argv)
    print("\n".join(probe(args.helper, memory=args.memory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
