"""BoundSchedule: MEST's LOWER/UPPER_BOUND, MASK_UPDATE_DECAY_EPOCH and SP_MASK_UPDATE_FREQ."""

from __future__ import annotations

import pytest

from mest_compile.errors import MestError
from mest_compile.sparsity.bounds import BoundSchedule

EM = ("0.92-0.91-0.9", "0.9-0.9-0.9")
EMS = ("0.9-0.9-0.9", "0.85-0.875-0.9")


def test_stage_boundaries_for_90_120() -> None:
    s = BoundSchedule.parse(*EM, "90-120", 5)
    assert {s.stage(e) for e in range(0, 90)} == {0}
    assert {s.stage(e) for e in range(90, 120)} == {1}
    assert {s.stage(e) for e in range(120, 200)} == {2}
    updates = [e for e in range(160) if s.updates_at(e)]
    assert updates == list(range(0, 160, 5))  # epoch 0 included, frequency never changes
    assert [e for e in updates if s.stage(e) == 0] == list(range(0, 90, 5))
    assert [e for e in updates if s.stage(e) == 1] == list(range(90, 120, 5))
    assert [e for e in updates if s.stage(e) == 2] == list(range(120, 160, 5))
    assert [s.bounds(e) for e in (0, 89, 90, 120)] == [(0.92, 0.9), (0.92, 0.9), (0.91, 0.9), (0.9, 0.9)]


def test_em_and_s_bounds() -> None:
    s = BoundSchedule.parse(*EMS, "90-120", 5)
    assert [s.bounds(e) for e in (0, 90, 155)] == [(0.9, 0.85), (0.9, 0.875), (0.9, 0.9)]
    assert s.min_sparsity == 0.85


def test_single_number_decay() -> None:
    s = BoundSchedule.parse(*EM, "90", 5)
    assert s.decay_epochs == (90,)
    assert (s.bounds(89), s.bounds(90), s.bounds(500)) == ((0.92, 0.9), (0.91, 0.9), (0.91, 0.9))
    assert BoundSchedule.parse(*EM, 90).stage(90) == 1  # an int works like the string


def test_single_float_bounds_hold_for_the_whole_run() -> None:
    s = BoundSchedule.parse("0.9", "0.85", "90-120", 5)
    assert {s.bounds(e) for e in (0, 90, 120, 400)} == {(0.9, 0.85)}
    assert s.stage(130) == 2  # the stage still counts decay epochs
    assert BoundSchedule.parse(0.9, 0.9, "10", 1).bounds(3) == (0.9, 0.9)


def test_bound_strings_capped_at_their_last_entry() -> None:
    s = BoundSchedule.parse("0.92-0.9", "0.9", "10-20-30", 5)
    assert [s.bounds(e) for e in (0, 10, 20, 30)] == [(0.92, 0.9), (0.9, 0.9), (0.9, 0.9), (0.9, 0.9)]


def test_no_decay_string_never_updates() -> None:
    for decay in (None, ""):
        s = BoundSchedule.parse(*EM, decay, 5)
        assert not any(s.updates_at(e) for e in range(50))
        assert s.stage(100) == 0 and s.bounds(100) == (0.92, 0.9)


def test_update_frequency() -> None:
    s = BoundSchedule.parse(*EM, "90-120", 1)
    assert all(s.updates_at(e) for e in range(10))
    assert [e for e in range(30) if BoundSchedule.parse(*EM, "90", "7").updates_at(e)] == [0, 7, 14, 21, 28]


def test_whole_string_float_is_tried_first_like_mest() -> None:
    # float("1e-3") succeeds, so the reference never splits it on '-'.
    assert BoundSchedule.parse("1e-3", "0", None).lower == (0.001,)


@pytest.mark.parametrize(
    ("lower", "upper", "decay", "freq", "named"),
    [
        ("0.92--0.9", "0.9", "90", 5, "0.92--0.9"),
        ("0.92-0.91-", "0.9", "90", 5, "0.92-0.91-"),
        ("", "0.9", "90", 5, "''"),
        ("0.9", "abc", "90", 5, "abc"),
        ("0.9", "0.9-x", "90", 5, "0.9-x"),
        ("1.0", "0.9", "90", 5, "1.0"),
        ("0.9-1.2", "0.9", "90", 5, "0.9-1.2"),
        ("-0.5", "-0.5", "90", 5, "-0.5"),
        ("0.9", "0.9", "120-90", 5, "120-90"),
        ("0.9", "0.9", "90-90", 5, "90-90"),
        ("0.9", "0.9", "-5", 5, "-5"),
        ("0.9", "0.9", "90--120", 5, "90--120"),
        ("0.9", "0.9", "ninety", 5, "ninety"),
        ("0.9", "0.9", "90.5", 5, "90.5"),
        ("0.9", "0.9", "90", 0, "0"),
        ("0.9", "0.9", "90", -5, "-5"),
        ("0.9", "0.9", "90", "five", "five"),
        ("0.9", "0.9", "90", 2.5, "2.5"),
        ("0.9", "0.95", "90", 5, "0.95"),  # grow-to sparser than prune-to
    ],
)
def test_malformed_inputs_name_the_string(lower: str, upper: str, decay: str, freq: object, named: str) -> None:
    with pytest.raises(MestError, match="(?s).*" + named.replace("-", r"\-").replace(".", r"\.")):
        BoundSchedule.parse(lower, upper, decay, freq)  # type: ignore[arg-type]


def test_negative_epoch_is_an_error() -> None:
    s = BoundSchedule.parse(*EM, "90-120", 5)
    with pytest.raises(MestError, match="-1"):
        s.updates_at(-1)
