"""DS snap_flatten converges when run again after stopping at any step: the chosen snapshot is
removed last, so a re-run that finds no snapshot at all knows the flatten was done (the lab's
convergence test found a re-run refusing: the chosen snapshot was already gone)."""
import pytest

from harness import fixtures
from tm_iscsi import settings as settings_mod
from tm_iscsi.ds import actions
from tm_iscsi.errors import DriverError
from tm_iscsi.one.ds_action import read_ds_action


@pytest.fixture
def flatten(mocker):
    call = next(c for c in fixtures.calls("ds") if c.action == "snap_flatten")
    action = read_ds_action("snap_flatten", list(call.args), call.read(".stdin", binary=True))
    ctx = mocker.Mock(settings=settings_mod.load({"TM_ISCSI_CONF": "/none"}))
    state = {"snapshots": [], "done": []}
    mocker.patch.object(actions.storage, "snapshots_of",
                        side_effect=lambda ctx, ds, lv: list(state["snapshots"]))
    mocker.patch.object(actions.storage, "revert",
                        side_effect=lambda ctx, ds, lv, snap, **o: state["done"].append(
                            ("revert", snap)))
    mocker.patch.object(actions.storage, "remove",
                        side_effect=lambda ctx, ds, lv, **o: state["done"].append(("remove", lv)))
    target = f"img-1-snap-{action.image.target_snapshot}"
    return lambda: actions.snap_flatten(ctx, action), state, target


def test_the_chosen_snapshot_goes_last(flatten):
    run, state, target = flatten
    state["snapshots"] = [target, "img-1-snap-7", "img-1-snap-8"]
    run()
    assert state["done"] == [("revert", target), ("remove", "img-1-snap-7"),
                             ("remove", "img-1-snap-8"), ("remove", target)]


def test_a_re_run_after_the_last_removal_has_nothing_to_do(flatten):
    run, state, _ = flatten
    run()
    assert state["done"] == []


def test_a_missing_snapshot_among_others_is_refused_before_any_change(flatten):
    run, state, target = flatten
    state["snapshots"] = ["img-1-snap-7"]
    with pytest.raises(DriverError, match="does not exist"):
        run()
    assert state["done"] == []
