"""The oned 7.4.0 captures in shared/fixtures: where they are and what index.json lists.

Tests locate them through ``$TM_ISCSI_FIXTURES`` or ``<repo root>/../shared/fixtures/oned-7.4.0``.
A missing tree is an error, never a skip: the protocol tests are meaningless without it.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

FIXTURES_ENV = "TM_ISCSI_FIXTURES"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "oned-7.4.0"


class FixturesMissing(RuntimeError):
    pass


def fixtures_root():
    """The fixture tree; raises FixturesMissing with what to do when it is not there."""
    configured = os.environ.get(FIXTURES_ENV)
    root = Path(configured) if configured else DEFAULT_FIXTURES
    if not (root / "index.json").is_file():
        source = "$%s" % FIXTURES_ENV if configured else "the default location"
        raise FixturesMissing(
            "oned 7.4.0 fixtures not found at %s (%s): set %s to the directory holding index.json"
            % (root, source, FIXTURES_ENV)
        )
    return root


def folder(name):
    path = fixtures_root() / name
    if not path.is_dir():
        raise FixturesMissing("fixture folder %s does not exist" % path)
    return path


@dataclass(frozen=True)
class Call:
    """One driver invocation captured in a folder (an entry of index.json)."""

    folder: str
    n: int
    driver: str
    action: str
    argv: Tuple[str, ...]
    files: Tuple[str, ...]
    stdin_bytes: int
    stdout: Optional[str]
    exit_code: int
    vm_state_at_call: Optional[str]

    @property
    def id(self):
        return "%s#%02d-%s-%s" % (self.folder, self.n, self.driver, self.action)

    @property
    def args(self):
        """argv without the script path."""
        return self.argv[1:]

    def file(self, suffix):
        """Path of this call's capture ending in ``suffix`` (".vm.xml", ".stdin", ...), or None."""
        for name in self.files:
            if name.endswith(suffix) and name.startswith("%02d-" % self.n):
                return fixtures_root() / self.folder / name
        return None

    def read(self, suffix, binary=False):
        path = self.file(suffix)
        if path is None:
            raise FixturesMissing("%s has no %s file" % (self.id, suffix))
        return path.read_bytes() if binary else path.read_text(encoding="utf-8")

    def extra(self, suffix):
        """Side files oned's run left that index.json does not list (.stderr, .rc)."""
        path = fixtures_root() / self.folder / ("%02d-%s-%s%s" % (self.n, self.driver, self.action, suffix))
        return path if path.is_file() else None


def load_index():
    with open(fixtures_root() / "index.json", encoding="utf-8") as handle:
        return json.load(handle)


def calls(driver=None):
    """Every captured call, in folder and start order; optionally only "tm" or "ds"."""
    found = []
    for entry in load_index()["folders"]:
        for call in entry["calls"]:
            if driver and call["driver"] != driver:
                continue
            found.append(
                Call(
                    folder=entry["folder"],
                    n=call["n"],
                    driver=call["driver"],
                    action=call["action"],
                    argv=tuple(call["argv"]),
                    files=tuple(call["files"]),
                    stdin_bytes=call["stdin_bytes"],
                    stdout=call.get("stdout"),
                    exit_code=call["exit_code"],
                    vm_state_at_call=call.get("vm_state_at_call"),
                )
            )
    return found


def transfer_files():
    """(folder, path) of every transfer file index.json lists."""
    found = []
    for entry in load_index()["folders"]:
        for name in entry["transfer_files"]:
            found.append((entry["folder"], fixtures_root() / entry["folder"] / name))
    return found
