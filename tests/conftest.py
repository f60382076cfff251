"""Test session plumbing: the lab is booted once per run for the tests marked `lab`, reset before
each of them, and taken down at the end."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from lab.session import LabSession  # noqa: E402  (sys.path above)


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
