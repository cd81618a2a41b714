"""`flows.evaluate.bar_summary`: a bar counts as met only where every world reaches it."""

from __future__ import annotations

import pytest

from flows.evaluate import EvaluateResult, bar_summary
from tasks.errors import InputError


def _result(
    seed: int, change: float, footprint: float, year: float, base: float = 0.3
) -> EvaluateResult:
    return EvaluateResult(
        seed=seed,
        rows=[
            ("change", "f1", change, base),
            ("change", "precision", 0.5, 0.1),  # not a bar: ignored
            ("footprint", "iou", footprint, base),
            ("dynamics", "within_1", year, base),
        ],
        models={},
        markdown="",
    )


def test_a_bar_is_met_only_where_every_world_reaches_it() -> None:
    rows = {
        (r.product, r.metric): r
        for r in bar_summary([_result(101, 0.95, 0.90, 0.86), _result(102, 0.80, 0.91, 0.87)])
    }
    change = rows[("change", "f1")]
    assert change.values == (0.95, 0.80) and change.worst == 0.80
    assert change.mean == pytest.approx(0.875)  # above the bar on average ...
    assert change.bar == 0.85 and not change.met_everywhere  # ... but not on world 102
    assert rows[("footprint", "iou")].met_everywhere
    assert rows[("dynamics", "within_1")].met_everywhere


def test_a_bar_needs_the_baseline_beaten_too() -> None:
    rows = bar_summary([_result(101, 0.90, 0.90, 0.90, base=0.92)])
    assert [r.met_everywhere for r in rows] == [False, False, False]


def test_missing_rows_and_no_results_are_refused() -> None:
    with pytest.raises(InputError, match="at least one seed"):
        bar_summary([])
    partial = _result(7, 0.9, 0.9, 0.9)
    partial.rows = partial.rows[:2]
    with pytest.raises(InputError, match=r"world 7.*footprint iou"):
        bar_summary([partial])
