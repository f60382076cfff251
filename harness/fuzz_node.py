"""Seeded hostile input for the node helper's CLI (`tm-iscsi-node`, root through sudo).

Each case is a well-formed call of one command (what the front-end sends) with one option value,
one field of a transaction's JSON request, or the words themselves made hostile. The runner calls
the helper's `main()` in-process with every external program and every lock replaced by a
recorder: a hostile call that starts a program or takes a lock got past the checks that must
stop it before anything changes."""
import contextlib
import io
import json
import random
import sys
from dataclasses import dataclass
from typing import List, Optional

from .fuzz import Outcome, plain

IQN = "iqn.2026-11.lab.tm-iscsi:host1"
TARGET = "iqn.2026-11.io.tm-iscsi:vg-one-100.vm-0-disk-0"
SERIAL = "5b0bd5a4-5a1e-5b5c-9a43-2a8d1c0e7f11"
LINK = "/var/lib/one/datastores/101/0/disk.0"

STORAGE_ATTACH = {
    "vg": "vg-one-100", "host": "host1", "initiator": IQN, "ds_id": 100,
    "disks": [{"lv": "vm-0-disk-0", "mode": "read+writeback", "image_lv": "img-0",
               "wb_host": "host1",
               "create": {"origin": "img-0", "size_mib": 64,
                          "owner": {"kind": "clone", "vm": 0, "disk": 0, "image": 0}}}],
}
STORAGE_RELEASE = {"vg": "vg-one-100", "host": "host1", "initiator": IQN,
                   "disks": [{"lv": "vm-0-disk-0", "remove": True, "wb_clear": True}]}
HOST_ATTACH = {"portal": "192.0.2.10", "initiator": IQN,
               "disks": [{"name": "vm-0-disk-0", "mode": "none", "link": LINK,
                          "luns": {"clone": {"iqn": TARGET, "serial": SERIAL}}}]}
HOST_DETACH = {"portal": "192.0.2.10", "remove_dir": "/var/lib/one/datastores/101/0",
               "disks": [{"name": "vm-0-disk-0", "link": LINK,
                          "luns": {"clone": {"iqn": TARGET, "serial": SERIAL}}}]}
BACKUP_SNAPSHOT = {"vg": "vg-one-100", "host": "host1", "initiator": IQN, "ds_id": 100,
                   "disks": [{"lv": "vm-0-disk-0", "increment": 1, "since": 0}]}
BACKUP_RELEASE = {"vg": "vg-one-100", "host": "host1",
                  "disks": [{"lv": "vm-0-disk-0", "keep": [0, 1]}]}
BACKUP_QUIESCE = {"stacks": ["vm-0-disk-0"], "domain": "one-0", "freeze": "AGENT"}
BACKUP_WRITE = {"portal": "192.0.2.10", "dir": "/var/lib/one/datastores/101/0/backup",
                "resume": ["vm-0-disk-0"], "domain": "one-0", "thaw": "AGENT",
                "files": [{"disk_id": 0, "increment": 1, "size_bytes": 64 << 20, "delta": True,
                           "lun": {"iqn": TARGET, "serial": SERIAL}}]}
CHECKPOINT_DRAIN = {"stacks": ["vm-0-disk-0"], "token": "0123abcd0123abcd", "hold": True,
                    "hold_seconds": 30}
CHECKPOINT_RESUME = {"stacks": ["vm-0-disk-0"], "token": "0123abcd0123abcd"}
CHECKPOINT_TAKE = {"vg": "vg-one-100", "host": "host1", "lvs": ["vm-0-disk-0"]}
CHECKPOINT_COMMIT = {"vg": "vg-one-100", "host": "host1", "lvs": ["vm-0-disk-0"]}
HOST_LOST = {"vg": "vg-one-100", "host": "host1", "without_checkpoint": True}

# command -> its options as the front-end gives them (a valid call).
BASES = {
    "storage-attach": ["--request", json.dumps(STORAGE_ATTACH)],
    "storage-release": ["--request", json.dumps(STORAGE_RELEASE)],
    "host-attach": ["--request", json.dumps(HOST_ATTACH)],
    "host-detach": ["--request", json.dumps(HOST_DETACH)],
    "backup-snapshot": ["--request", json.dumps(BACKUP_SNAPSHOT)],
    "backup-release": ["--request", json.dumps(BACKUP_RELEASE)],
    "backup-quiesce": ["--request", json.dumps(BACKUP_QUIESCE)],
    "backup-write": ["--request", json.dumps(BACKUP_WRITE)],
    "checkpoint-drain": ["--request", json.dumps(CHECKPOINT_DRAIN)],
    "checkpoint-resume": ["--request", json.dumps(CHECKPOINT_RESUME)],
    "checkpoint-take": ["--request", json.dumps(CHECKPOINT_TAKE)],
    "checkpoint-commit": ["--request", json.dumps(CHECKPOINT_COMMIT)],
    "host-lost": ["--request", json.dumps(HOST_LOST)],
    "lv-create": ["--vg", "vg-one-100", "--lv", "img-3", "--size-mib", "64", "--tag",
                  "tm_iscsi", "--max-fill", "90"],
    "lv-snapshot": ["--vg", "vg-one-100", "--origin", "img-0", "--lv", "img-2", "--max-fill",
                    "90"],
    "lv-remove": ["--vg", "vg-one-100", "--lv", "img-2"],
    "lv-resize": ["--vg", "vg-one-100", "--lv", "img-2", "--size-mib", "128"],
    "lv-info": ["--vg", "vg-one-100", "--lv", "img-2"],
    "lv-list": ["--vg", "vg-one-100"],
    "lv-write": ["--vg", "vg-one-100", "--lv", "img-2", "--format", "raw"],
    "lv-read": ["--vg", "vg-one-100", "--lv", "img-2"],
    "lv-copy": ["--vg", "vg-one-100", "--src", "img-0", "--dst", "img-2"],
    "lv-mkfs": ["--vg", "vg-one-100", "--lv", "img-2", "--fs", "ext4"],
    "lv-tag": ["--vg", "vg-one-100", "--lv", "img-2", "--add", "tm_iscsi.retired=yes"],
    "export": ["--vg", "vg-one-100", "--lv", "img-2", "--initiator", IQN],
    "unexport": ["--vg", "vg-one-100", "--lv", "img-2"],
    "fence": ["--initiator", IQN],
    "pool-status": ["--vg", "vg-one-100"],
    "pool-ensure": ["--vg", "vg-one-100"],
    "attach": ["--portal", "192.0.2.10", "--iqn", TARGET, "--serial", SERIAL],
    "detach": ["--portal", "192.0.2.10", "--iqn", TARGET],
    "dir-pack": ["--path", "/var/lib/one/datastores/101/0"],
    "dir-unpack": ["--path", "/var/lib/one/datastores/101/0"],
    "file-put": ["--path", "/var/lib/one/datastores/101/0/disk.4"],
    "path-remove": ["--path", "/var/lib/one/datastores/101/0/disk.4"],
    "stack-flush": ["--name", "vm-0-disk-0"],
    "stack-teardown": ["--name", "vm-0-disk-0", "--flush"],
    "stack-writeback": ["--name", "vm-0-disk-0"],
    "image-extract": ["--vg", "vg-one-100", "--lv", "img-2", "--inner", "/srv", "--partition",
                      "1"],
    "image-overlay": ["--vg", "vg-one-100", "--lv", "img-2", "--at", "/srv", "--partition", "0"],
}
# Values of an option that look hostile elsewhere but are fine in it: an absolute path inside an
# image's own filesystem may well be /etc/passwd.
LEGITIMATE_BY_OPTION = {"--inner": {"/etc/passwd", "/dev/sda"},
                        "--at": {"/etc/passwd", "/dev/sda"}}
IMAGE_PATHS = ("relative", "/a/../b", "/a\nb", "", "/" + "x" * 5000, "-x")

HOSTILE_VALUES = (
    "", " ", "a b", "x;id", "$(id)", "`id`", "a\nb", "-x", "--help", "\u00fc", "x" * 5000,
    "9" * 5000, "../../etc/passwd", "/etc/passwd", "/dev/sda", "*", "a\tb",
)
HOSTILE_PATHS = (
    "/etc/passwd", "/var/lib/one/datastores/../../../etc/shadow", "relative/path",
    "/var/lib/one/datastores/101/0/../../../../../root", "/var/lib/one", "/", "/dev/sda",
    "/var/lib/one/datastores/101/0/\nx",
)
# Portals are addresses: a name would make the helper ask DNS, outside the test.
# Option -> values that are hostile in that option only (not in every option).
HOSTILE_BY_OPTION = {
    "--lv": ("tpool", "root", "swap_1", "img-0-snap-x", "vm-1-disk"),
    "--origin": ("tpool", "root"),
    "--src": ("tpool",), "--dst": ("tpool", "root"),
    "--vg": ("vg0", "ubuntu-vg", "vg-one-x"),
    "--size-mib": ("0", "-1", "x", "1e3", "99999999999999"),
    "--max-fill": ("101", "-5", "x", "1e2"),
    "--tag": ("a b", "x" * 300, "tag;id"),
    "--add": ("a b", "tag;id"), "--initiator": ("not-an-iqn", "iqn.x;id"),
    "--iqn": ("not-an-iqn",), "--serial": ("x;id", "a b"), "--portal": ("storage;id", "x:99999"),
    "--fs": ("ntfs", "ext4;id"), "--format": ("vmdk",), "--name": ("../x", "a b", "tpool"),
    "--path": HOSTILE_PATHS,
    "--inner": IMAGE_PATHS, "--at": IMAGE_PATHS,
    "--partition": ("-1", "x", "129", "1e2", "0x1"),
}
HOSTILE_JSON = (
    "", "{", "[]", "null", "1", '"x"', "{}", '{"vg": NaN}', "[" * 5000 + "]" * 5000,
    '{"vg": "vg-one-100", "vg": "x"}', "\u00fc", "{\"a\": 1e999}",
)
# By the type of the field in the valid request: each is wrong for a field of that type.
HOSTILE_FIELD_VALUES = {
    str: ("../x", "-x", "a b", "x;id", "x" * 5000, "", 1, True, [], {}, "\u00fc", "a\nb"),
    int: ("1", 1.5, 1e300, 2 ** 80, -1, True, [], "x"),
    bool: ("yes", 1, [], "true"),
}


@dataclass
class NodeCase:
    argv: List[str]
    stdin: Optional[bytes]
    what: str


def _set_path(doc, path, value):
    """doc with doc[path[0]][path[1]]... = value (a copy)."""
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _field_paths(doc, prefix=()):
    """Every leaf field of a request: (path, value)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _field_paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _field_paths(value, prefix + (i,))
    else:
        yield prefix, doc


REQUESTS = {"storage-attach": STORAGE_ATTACH, "storage-release": STORAGE_RELEASE,
            "host-attach": HOST_ATTACH, "host-detach": HOST_DETACH,
            "backup-snapshot": BACKUP_SNAPSHOT, "backup-release": BACKUP_RELEASE,
            "backup-quiesce": BACKUP_QUIESCE, "backup-write": BACKUP_WRITE,
            "checkpoint-drain": CHECKPOINT_DRAIN, "checkpoint-resume": CHECKPOINT_RESUME,
            "checkpoint-take": CHECKPOINT_TAKE, "checkpoint-commit": CHECKPOINT_COMMIT,
            "host-lost": HOST_LOST}
# Fields whose every value is a legitimate choice (a flag, a mode the request may leave out).
_FREE_FIELDS = {("disks", 0, "remove"), ("disks", 0, "wb_clear"), ("files", 0, "delta"),
                ("hold",), ("valid",), ("without_checkpoint",)}


def cases(seed):
    rng = random.Random(seed)
    for command, options in BASES.items():
        yield NodeCase([command, *options, "--no-such-option"], None, f"{command} unknown option")
        yield NodeCase([command], None, f"{command} without options")
        if command in REQUESTS:
            for text in rng.sample(HOSTILE_JSON, 6):
                yield NodeCase([command, "--request", text], None,
                               f"{command} request {text[:30]!r}")
            doc = REQUESTS[command]
            for path, _old in _field_paths(doc):
                if path in _FREE_FIELDS:
                    continue
                values = HOSTILE_FIELD_VALUES[type(_old)]
                for value in rng.sample(values, 4):
                    bad = _set_path(doc, path, value)
                    yield NodeCase([command, "--request", json.dumps(bad)], None,
                                   f"{command} {'.'.join(map(str, path))}={str(value)[:30]!r}")
            yield NodeCase([command, "--request", json.dumps({**doc, "extra": 1})], None,
                           f"{command} unknown field")
            listed = next((k for k in ("disks", "files", "stacks", "lvs") if k in doc), None)
            if listed is None:
                continue
            many = dict(doc, **{listed: doc[listed] * 65})
            yield NodeCase([command, "--request", json.dumps(many)], None, f"{command} 65 disks")
            continue
        for i in range(0, len(options), 2):
            option = options[i]
            if i + 1 >= len(options) or options[i + 1].startswith("--"):
                continue
            pool = list(HOSTILE_BY_OPTION.get(option, ())) + rng.sample(HOSTILE_VALUES, 6)
            for value in pool:
                if value in LEGITIMATE_BY_OPTION.get(option, ()):
                    continue
                words = list(options)
                words[i + 1] = value
                yield NodeCase([command, *words], None, f"{command} {option}={value[:30]!r}")
    for budget in ("0", "-1", "x", "1e9", "nan", "inf"):
        yield NodeCase(["--budget", budget, "lv-list", "--vg", "vg-one-100"], None,
                       f"--budget {budget}")
    yield NodeCase(["no-such-command"], None, "unknown command")
    yield NodeCase([], None, "no command")


class Touched(Exception):
    pass


def run_case(case, monkeypatch_targets):
    """Run one case with `monkeypatch_targets(record)` installing the recorders; returns the
    outcome."""
    from tm_iscsi.node import cli
    touched = []
    # Byte-backed, as the real streams are: bulk commands write to sys.stdout.buffer.
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace")
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(case.stdin or b""), encoding="utf-8")
    try:
        with monkeypatch_targets(touched), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(case.argv))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stdin = saved
    out.flush()
    err.flush()
    text = err.buffer.getvalue().decode("utf-8", "replace")
    return Outcome(code, out.buffer.getvalue().decode("utf-8", "replace"), plain(text), touched)
