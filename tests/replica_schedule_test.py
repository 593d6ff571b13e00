"""The one push/fetch schedule of every replica, table-driven."""

import pytest

from gasgd_tf.replica import Due, SyncSchedule

P, F, PF, _ = Due(push=True), Due(fetch=True), Due(push=True, fetch=True), Due()


@pytest.mark.parametrize(
    "n_push, n_fetch, num_steps, moves, expected",
    [
        # One step at a time: due where the step is a multiple; the last step
        # always pushes and never fetches.
        (2, 3, 7, [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7)], [_, P, F, P, PF, P]),
        (1, 1, 3, [(0, 1), (1, 2), (2, 3)], [PF, PF, P]),
        # A resumed run counts from the step it starts after.
        (2, 2, 10, [(5, 6), (6, 7)], [PF, _]),
        # Several steps at once (Keras steps_per_execution): due when a
        # multiple is crossed, once however many are crossed.
        (2, 3, None, [(0, 4), (4, 5), (5, 7)], [PF, _, PF]),
        (10, 10, None, [(0, 3), (3, 9), (9, 12)], [_, _, PF]),
        # Unknown length: no forced push at any step (finish() pushes the rest).
        (4, 4, None, [(0, 1), (1, 2), (2, 3)], [_, _, _]),
        # Crossing the last step of a known length by several steps.
        (4, 3, 7, [(4, 8)], [P]),
        # No move: nothing, even at a multiple.
        (2, 2, None, [(2, 2), (3, 1)], [_, _]),
    ],
)
def test_due_pushes_and_fetches(n_push, n_fetch, num_steps, moves, expected):
    schedule = SyncSchedule(n_push, n_fetch, num_steps)
    assert [schedule.due(step, previous) for previous, step in moves] == expected


def test_a_due_nothing_is_false_and_anything_else_true():
    assert not Due() and P and F and PF


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_push": 0, "n_fetch": 1}, "n_push must be a positive integer"),
        ({"n_push": 1, "n_fetch": 2.5}, "n_fetch must be a positive integer"),
        ({"n_push": True, "n_fetch": 1}, "n_push must be a positive integer"),
        ({"n_push": 1, "n_fetch": 1, "num_steps": 0}, "num_steps must be a positive integer"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyncSchedule(**kwargs)


def test_with_num_steps_keeps_the_intervals():
    schedule = SyncSchedule(3, 5).with_num_steps(9)
    assert (schedule.n_push, schedule.n_fetch, schedule.num_steps) == (3, 5, 9)
    assert schedule.due(8, 9) == Due()
    assert schedule.due(8, 8) == Due()
    assert schedule.due(9, 8) == P
