"""Seeded hostile input for every front-end entry point, built from what a real oned 7.4.0 sent.

Each case is one captured call (shared/fixtures) with one thing made hostile: an argv word, the
driver action on stdin, or an attribute of the VM or datastore document oned answers with. Every
case is input the driver must refuse; `face_invalid` says whether it is invalid on its face (the
refusal must come before any node call) or only once oned's answer is read.

The runner calls the entry points in-process (the same `run()` the remotes scripts and console
scripts end in), with the nodes replaced by a recorder that never opens a socket and oned by the
stand-in, so thousands of calls fit in a test of a few minutes."""
import base64
import contextlib
import io
import json
import os
import random
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import fixtures

# Words no argv position of any TM action accepts.
HOSTILE_WORDS = (
    "", " ", "a b", "x;id", "$(id)", "`id`", "a|b", "a&&b", "a>b", "a\nb", "a\x00b", "a\tb",
    "-oProxyCommand=touch /tmp/p", "--help", "\u00fc", "\u202e", "\U0001f600", "x" * 5000,
    "9" * 5000, "host1:/var/lib/one//datastores/101/0/disk.0;id", "'", '"', "\\", "*", "~root",
    "host1:/var/lib/one//datastores/101/0/../../../../etc/disk.0",
)
# Words no id or size position accepts.
HOSTILE_NUMBERS = (
    "-1", "x", "1x", "0x10", "1.0", "1e3", "+1", " 1", "1 ", "\u0661\u0662", "99999999999",
    "9" * 5000, "-" + "9" * 40, "",
)
# Words that look hostile but oned does send in that position: (action, argv index) -> words.
LEGITIMATE = {("cpds", 2): {"-1"}}   # cpds of the disk itself, not of one of its snapshots
# Values a VM disk attribute the action reads may not take.
HOSTILE_DISK_ATTRS = {
    "SOURCE": (
        "vg-one-100/img-0;id", "../../etc/passwd", "vg-one-100/-img", "vg one/img-0",
        "vg-one-100/img-0/x", "vg-one-100/" + "x" * 300, "/dev/sda", "vg-one-100/tpool",
        "vg-one-100/img-0-base", "vg-one-100/vm-1-disk-0-map", "vg-two/img-0"),
    "DATASTORE_ID": ("x", "9" * 5000, "-", "1.5", "\u0661"),
}
# Values no datastore attribute tm_iscsi reads may take (per attribute).
HOSTILE_DS_ATTRS = {
    "ISCSI_HOST": ("storage;id", "-oProxyCommand=x", "a b", "x" * 300, "st\u00f6rage", "$(id)"),
    "ISCSI_PORTAL": ("storage;id", "a b", "-x", "storage:99999", "storage:x", "[::1", "$(id)",
                     "x" * 300, "storage:3260:1"),
    "VG_NAME": ("../x", "vg one", "-vg", "vg;id", "x" * 300, "vg/x"),
    "THIN_POOL": ("../x", "tp ool", "-tp", "tp;id", "x" * 300),
    "ISCSI_IQN_BASE": ("not-an-iqn", "iqn.2026-11.x;id", "iqn with space", "iqn." + "x" * 300,
                       "IQN.2026-11.UPPER", "iqn.2026-11.x:", "-iqn.2026-11.x"),
    "CACHE_MODE": ("bogus", "read+bogus", "read;id", "writeback " * 3, "\u00fc"),
    "MAX_POOL_FILL": ("x", "150", "-5", "9" * 5000, "50%", "1e2"),
    "WRITEBACK_CACHE_MB": ("x", "1", "9" * 50, "-64"),
    "ISCSI_CHAP_USER": ("a b", "x" * 300, "user;id"),
    "CACHE_AWARE_PLACEMENT": ("maybe", "YES;id", "1", "x" * 300),
}
# Image attributes of DS driver actions, with the actions that read each.
IMAGE_ATTR_USERS = {
    "PATH": ("cp", "stat", "clone"),
    "SOURCE": ("rm", "snap_delete", "snap_revert", "snap_flatten", "export"),
    "TARGET_SNAPSHOT": ("snap_delete", "snap_revert", "snap_flatten"),
    "SIZE": ("mkfs",),
    "FS": ("mkfs",),
}
HOSTILE_IMAGE_ATTRS = {
    "PATH": ("relative/path.raw", "-rf", "/etc/shadow", "/var/lib/one/.one/one_auth",
             "/var/tmp/../../etc/passwd", "ftp://x/y.raw", "file:///etc/passwd", "a;b",
             "/var/tmp/\x00x", "x" * 5000),
    "SOURCE": ("vg-one-100/img-0;id", "../../etc/passwd", "vg-one-100/-img", "vg one/img-0",
               "vg-one-100/img-0/x", "vg-one-100/" + "x" * 300, "/dev/sda", "vg-one-100/tpool",
               "vg-one-100/img-0\nvg-one-100/img-1"),
    "TARGET_SNAPSHOT": ("x", "-5", "9" * 5000, "1;id", ""),
    "SIZE": ("x", "-1", "0", "9" * 5000, "1.5"),
    "FS": ("ext4;id", "../x", "-F", "ext4 -E root_owner", "x" * 300, "nosuchfs"),
}
# What a document on stdin (DS actions, TM monitor and migrations) can be, besides a fine one.
ENTITY_BOMB = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
               '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
               '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
               '<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>')
EXTERNAL_ENTITY = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


@dataclass
class Case:
    program: str                     # "tm" or "ds"
    action: str
    argv: List[str]
    stdin: Optional[bytes]
    documents: Dict[str, str] = field(default_factory=dict)   # what oned answers: "vm"/"ds-N"
    face_invalid: bool = True
    what: str = ""

    def describe(self):
        return f"{self.program} {self.action}: {self.what}"


@dataclass
class Outcome:
    code: int
    stdout: str
    plain_lines: List[str]
    node_calls: List[tuple]    # what reached a node (front-end), or what the helper touched

    @property
    def traceback(self):
        text = "\n".join(self.plain_lines)
        return self.code == 70 or "Traceback" in text or "internal error" in text

    def problems(self):
        """How the call broke the error contract: exit != 0, one plain stderr line, no
        traceback, nothing on stdout."""
        found = ["traceback"] if self.traceback else []
        if self.code == 0:
            found.append("exit 0")
        if len(self.plain_lines) != 1:
            found.append(f"{len(self.plain_lines)} plain stderr lines")
        if self.stdout.strip():
            found.append("output")
        return found


def plain(stderr_text):
    """The lines of stderr the administrator reads (progress lines aside)."""
    return [line for line in stderr_text.splitlines()
            if line.strip() and not line.startswith(("INFO:", "WARN:", "DEBUG:"))]


def _b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text)


def _set_text(root, path, value):
    node = root.find(path)
    if node is None:
        parent_path, _, tag = path.rpartition("/")
        parent = root.find(parent_path) if parent_path else root
        if parent is None:
            return False
        node = ET.SubElement(parent, tag)
    node.text = value
    return True


def _remove(root, path):
    parent_path, _, tag = path.rpartition("/")
    parent = root.find(parent_path) if parent_path else root
    node = None if parent is None else parent.find(tag)
    if node is None:
        return False
    parent.remove(node)
    return True


def _edited(xml, change):
    root = ET.fromstring(xml)
    if change(root) is False:
        return None
    return ET.tostring(root, encoding="unicode")


def _tm_documents(call):
    docs = {}
    vm = call.file(".vm.xml")
    if vm is not None:
        docs["vm"] = vm.read_text()
    ds = call.file(".ds.xml")
    if ds is not None:
        text = ds.read_text()
        docs[f"ds-{ET.fromstring(text).findtext('ID')}"] = text
    return docs


def _ds_in_action(xml):
    root = ET.fromstring(xml)
    node = root.find("DATASTORE")
    return root, node


def base_calls():
    """(driver, action, argv words, stdin bytes or None, documents) of one call per distinct
    captured action, plus DS export (oned's marketplace calls it with the rm document)."""
    seen, bases = set(), []
    for call in fixtures.calls():
        if call.exit_code or (call.driver, call.action) in seen:
            continue
        seen.add((call.driver, call.action))
        stdin = call.read(".stdin", binary=True) if call.stdin_bytes else None
        bases.append((call.driver, call.action, list(call.args), stdin,
                      _tm_documents(call) if call.driver == "tm" else {}))
        if call.driver == "ds" and call.action == "rm":
            bases.append(("ds", "export", list(call.args), stdin, {}))
    return bases + backup_calls()


# The backup captures (folders 27-30): TM actions oned 7.4 runs for `onevm backup` and
# `onevm restore`, read from their folders (index.json does not list them).
BACKUP_CAPTURES = (("28-backup-full-live", "01-tm-prebackup_live"),
                   ("28-backup-full-live", "03-tm-postbackup_live"),
                   ("27-backup-full-poweroff", "01-tm-prebackup"),
                   ("27-backup-full-poweroff", "03-tm-postbackup"),
                   ("30-backup-restore", "22-tm-restore"))
BACKUP_ACTIONS = ("prebackup", "prebackup_live", "postbackup", "postbackup_live")


def backup_calls():
    out = []
    for folder, capture in BACKUP_CAPTURES:
        root = fixtures.folder(folder)
        argv = json.loads((root / f"{capture}.argv.json").read_text())
        action = os.path.basename(argv[0])
        stdin_path = root / f"{capture}.stdin"
        stdin = stdin_path.read_bytes() if stdin_path.exists() else None
        docs = {}
        for suffix, key in ((".vm.xml", "vm"), (".ds.xml", "ds")):
            path = root / f"{capture}{suffix}"
            if path.exists():
                text = path.read_text()
                docs[key if key == "vm" else f"ds-{ET.fromstring(text).findtext('ID')}"] = text
        out.append(("tm", action, argv[1:], stdin, docs))
    return out


def _backup_stdin_cases(action, argv, stdin, docs):
    """The VM document a backup action gets on stdin (plain XML), broken or another VM's."""
    xml = stdin.decode()
    body = xml[xml.index("<VM"):]
    broken = [
        (b"", "empty stdin"), (b"\xff\xfe\x00garbage", "non-UTF-8 bytes"),
        (xml[: len(xml) // 2].encode(), "truncated XML"), (b"<OTHER_ROOT/>", "wrong root"),
        ((ENTITY_BOMB + body.replace("<VM>", "<VM>&d;", 1)).encode(), "entity expansion"),
        ((EXTERNAL_ENTITY + body.replace("<VM>", "<VM>&x;", 1)).encode(), "external entity"),
        (_edited(xml, lambda r: _set_text(r, "ID", "7")).encode(), "stdin VM is another VM"),
        (_edited(xml, lambda r: _set_text(r, "BACKUPS/BACKUP_CONFIG/LAST_DATASTORE_ID",
                                          "x")).encode() + b"<x/>", "two documents"),
    ]
    for data, what in broken:
        yield Case("tm", action, argv, data, docs, True, what)


def _argv_cases(driver, action, argv, stdin, docs, rng):
    for i, word in enumerate(argv):
        pool = HOSTILE_NUMBERS if word.isdigit() else HOSTILE_WORDS
        pool = [v for v in pool if v not in LEGITIMATE.get((action, i), ())]
        for value in rng.sample(pool, min(len(pool), 6)):
            words = list(argv)
            words[i] = value
            yield Case(driver, action, words, stdin, docs, True, f"argv[{i}]={value[:40]!r}")
    yield Case(driver, action, argv[:-1], stdin, docs, True, "last word missing")
    yield Case(driver, action, argv + [rng.choice(HOSTILE_WORDS)], stdin, docs, True,
               "extra word")
    yield Case(driver, action, [], stdin, docs, True, "no words")


def _stdin_cases(driver, action, argv, stdin, docs, rng):
    xml = base64.b64decode(stdin).decode()
    body = xml[xml.index("<DS_DRIVER_ACTION_DATA"):] if "<DS_DRIVER_ACTION_DATA" in xml else xml
    broken = [
        (b"", "empty stdin"), (b"not base64 at all!", "invalid base64"),
        (b"\xff\xfe\x00garbage", "non-UTF-8 bytes"), (_b64(b"\xff\xfe\xfd"), "base64 of non-UTF-8"),
        (_b64("just text"), "base64 of text"), (_b64(xml[: len(xml) // 2]), "truncated XML"),
        (_b64("<OTHER_ROOT/>"), "wrong root"),
        (_b64(ENTITY_BOMB + body.replace("<DS_DRIVER_ACTION_DATA>",
                                         "<DS_DRIVER_ACTION_DATA>&d;", 1)), "entity expansion"),
        (_b64(EXTERNAL_ENTITY + body.replace("<DS_DRIVER_ACTION_DATA>",
                                             "<DS_DRIVER_ACTION_DATA>&x;", 1)), "external entity"),
        (stdin + b"\n" + stdin, "two documents"),
    ]
    for data, what in broken:
        yield Case(driver, action, argv, data, docs, True, what)


def _migration_stdin_cases(action, argv, stdin, docs):
    """The VM document a migration hook gets on stdin, describing another VM."""
    xml = base64.b64decode(stdin).decode()
    other = _edited(xml, lambda r: _set_text(r, "ID", "7"))
    yield Case("tm", action, argv, _b64(other), docs, True, "stdin VM is another VM")


def _image_attr_cases(action, argv, stdin, rng):
    xml = base64.b64decode(stdin).decode()
    for attr, users in IMAGE_ATTR_USERS.items():
        if action not in users:
            continue
        values = list(HOSTILE_IMAGE_ATTRS[attr])
        for value in rng.sample(values, min(len(values), 6)):
            edited = _edited(xml, lambda r: _set_text(r, f"IMAGE/{attr}", value))
            if edited:
                yield Case("ds", action, argv, _b64(edited), {}, True,
                           f"IMAGE/{attr}={value[:40]!r}")
        if attr in ("PATH", "TARGET_SNAPSHOT") or (attr == "SOURCE" and action != "rm"):
            edited = _edited(xml, lambda r: _remove(r, f"IMAGE/{attr}"))
            if edited:
                yield Case("ds", action, argv, _b64(edited), {}, True, f"IMAGE/{attr} missing")
    edited = _edited(xml, lambda r: _set_text(r, "IMAGE/ID", "9" * 5000))
    if edited and action != "stat":
        yield Case("ds", action, argv, _b64(edited), {}, True, "IMAGE/ID huge")


def _ds_attr_values(rng):
    for attr, values in HOSTILE_DS_ATTRS.items():
        for value in rng.sample(values, min(len(values), 4)):
            yield attr, value


def _with_ds_attr(root, ds_path, attr, value):
    ds = root if ds_path is None else root.find(ds_path)
    template = ds.find("TEMPLATE")
    _set_text(template, attr, value)
    if attr == "ISCSI_CHAP_USER":
        _set_text(template, "ISCSI_CHAP_PASSWORD", "secret-ok")
    return True


def _ds_document_cases(driver, action, argv, stdin, docs, read_ds, rng):
    """Hostile datastore attributes: in the driver action (DS) or oned's answer (TM)."""
    if driver == "ds":
        if action == "stat":
            return
        xml = base64.b64decode(stdin).decode()
        for attr, value in _ds_attr_values(rng):
            edited = _edited(xml, lambda r: _with_ds_attr(r, "DATASTORE", attr, value))
            yield Case("ds", action, argv, _b64(edited), {}, True,
                       f"DATASTORE {attr}={value[:40]!r}")
        edited = _edited(xml, lambda r: _remove(r, "DATASTORE/TEMPLATE/ISCSI_HOST"))
        yield Case("ds", action, argv, _b64(edited), {}, True, "ISCSI_HOST missing")
        return
    for ds_id in read_ds:
        key = f"ds-{ds_id}"
        if key not in docs:
            continue
        for attr, value in _ds_attr_values(rng):
            edited = dict(docs)
            edited[key] = _edited(docs[key], lambda r: _with_ds_attr(r, None, attr, value))
            yield Case("tm", action, argv, stdin, edited, True, f"ds {ds_id} {attr}={value[:40]!r}")


def _disk_id_of(argv):
    for word in argv:
        if ":" in word and "/disk." in word:
            tail = word.rsplit("/disk.", 1)[1]
            if tail.isdigit():
                return tail
    return None


def _vm_document_cases(action, argv, stdin, docs, rng):
    """Hostile attributes of the disk the action names, in oned's VM document."""
    disk_id = _disk_id_of(argv)
    if "vm" not in docs or disk_id is None:
        return
    root = ET.fromstring(docs["vm"])
    disk = next((d for d in root.findall("TEMPLATE/DISK") if d.findtext("DISK_ID") == disk_id),
                None)
    if disk is None:
        return
    if disk.find("SOURCE") is None:
        return   # a volatile disk: its LV is named by ids and lives in the system datastore
    for attr, values in HOSTILE_DISK_ATTRS.items():
        if disk.find(attr) is None:
            continue
        for value in rng.sample(values, min(len(values), 5)):
            def change(r, attr=attr, value=value):
                for d in r.findall("TEMPLATE/DISK"):
                    if d.findtext("DISK_ID") == disk_id:
                        d.find(attr).text = value
            edited = dict(docs)
            edited["vm"] = _edited(docs["vm"], change)
            yield Case("tm", action, argv, stdin, edited, True,
                       f"VM disk {disk_id} {attr}={value[:40]!r}")


def cases(seed, read_datastores):
    """Every hostile case for `seed`; read_datastores[(driver, action)] lists the datastore ids
    the unchanged call reads from oned (those whose attributes it must check)."""
    rng = random.Random(seed)
    for driver, action, argv, stdin, docs in base_calls():
        yield from _argv_cases(driver, action, argv, stdin, docs, rng)
        if stdin is not None and (driver == "ds" or action == "monitor"):
            yield from _stdin_cases(driver, action, argv, stdin, docs, rng)
        if stdin is not None and action in ("premigrate", "postmigrate", "failmigrate"):
            yield from _migration_stdin_cases(action, argv, stdin, docs)
        if stdin is not None and action in BACKUP_ACTIONS:
            yield from _backup_stdin_cases(action, argv, stdin, docs)
        if driver == "ds":
            yield from _image_attr_cases(action, argv, stdin, rng)
        else:
            yield from _vm_document_cases(action, argv, stdin, docs, rng)
        yield from _ds_document_cases(driver, action, argv, stdin, docs,
                                      read_datastores.get((driver, action), ()), rng)


class NoNode:
    """A node handle that records what it was asked and answers nothing: a hostile call that
    gets this far has reached a node."""

    def __init__(self, host, calls):
        self.host, self.calls = host, calls

    def call(self, command, *args, **kwargs):
        from tm_iscsi.errors import DriverError
        self.calls.append((self.host, command, args))
        raise DriverError(f"{self.host}: the fuzz recorder answers no node call ({command})")

    def stream_out(self, command, *args, **kwargs):
        return self.call(command, *args)


@contextlib.contextmanager
def _stdio(stdin_bytes):
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    # A strict UTF-8 text stdin, as under a C.UTF-8 or POSIX locale that refuses bad bytes.
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin_bytes or b""), encoding="utf-8",
                                 errors="strict")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        sys.stdin = saved


def run_case(case, standin, make_ctx):
    """Serve the case's documents, run it in-process, return its Outcome."""
    for text in case.documents.values():
        if text is not None:
            standin.put_xml(text)
    ctx, calls = make_ctx()
    from tm_iscsi.ds import main as ds_main
    from tm_iscsi.tm import main as tm_main
    with _stdio(case.stdin) as (out, err):
        if case.program == "tm":
            stdin_text = None
            if case.action in ("premigrate", "postmigrate", "failmigrate") or \
                    case.action in BACKUP_ACTIONS:
                stdin_text = (case.stdin or b"").decode("utf-8", "replace")
            code = tm_main.run(case.action, case.argv, stdin=stdin_text, ctx=ctx)
        else:
            code = ds_main.run(case.action, case.argv, ctx=ctx)
    return Outcome(code, out.getvalue(), plain(err.getvalue()), list(calls))
