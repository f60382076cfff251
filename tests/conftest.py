"""Test session plumbing: the lab is booted once per run for the tests marked `lab`, reset before
each of them, and taken down at the end."""
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


NODE_SRC = "/opt/tm_iscsi"
NODE_PYTHON = "/opt/tm_iscsi-venv/bin/python"


class LabSession:
    """What a lab test holds: run things on nodes and check them."""

    def __init__(self, api):
        self.api = api

    def sh(self, node, script, check=True, timeout=300, input=None):
        """Run a bash script on a node (strict mode); return its stdout as text."""
        payload = "set -euo pipefail\n" + script
        result = self.api.exec_(node, ["bash", "-c", payload], input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{node}: exit {result.returncode}\n--- script\n{script}\n--- stderr\n"
                f"{result.stderr.decode(errors='replace')}")
        return result if not check else result.stdout.decode(errors="replace")

    def node_helper(self, node, *args, input=None, timeout=300, check=True):
        """Run `tm-iscsi-node ARGS` on a node from the checkout; return its JSON object (check) or
        the CompletedProcess (check=False)."""
        argv = ["env", f"PYTHONPATH={NODE_SRC}", NODE_PYTHON, "-m", "tm_iscsi.node", *args]
        result = self.api.exec_(node, argv, input=input, timeout=timeout)
        if not check:
            return result
        if result.returncode != 0:
            raise AssertionError(f"{node}: tm-iscsi-node {' '.join(args)} exit "
                                 f"{result.returncode}: {result.stderr.decode(errors='replace')}")
        return json.loads(result.stdout)

    def run(self, node, argv, check=False, timeout=300, input=None):
        result = self.api.exec_(node, argv, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{node}: {argv} exit {result.returncode}: "
                                 f"{result.stderr.decode(errors='replace')}")
        return result


@pytest.fixture(scope="session")
def lab_session():
    from lab import api
    # TM_ISCSI_LAB_REUSE=1 keeps a lab that is already up (and leaves it up): for a developer's
    # edit-test loop. CI always boots its own and takes it down.
    reuse = os.environ.get("TM_ISCSI_LAB_REUSE") == "1"
    already_up = all(row["state"] == "up" for row in api.status())
    if not (reuse and already_up):
        if any(row["state"] != "down" for row in api.status()):
            api.down()
        api.up()
    yield LabSession(api)
    if not reuse:
        api.down()


@pytest.fixture
def lab(lab_session):
    lab_session.api.reset()
    return lab_session


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/lab/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.lab)
    # The test that takes the lab down and up again runs last, so no other test pays a boot.
    items.sort(key=lambda item: item.get_closest_marker("lab_cycle") is not None)
