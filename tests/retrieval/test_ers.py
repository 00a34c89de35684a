"""ERS reproduces the worked example of docs/method.md and every published table row."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from retrieval.errors import UserError
from retrieval.robustness.ers import ATTACK_KEYS, ers, ers_normalize

ROWS_FILE = Path(__file__).with_name("ers_rows.csv")


def _rows() -> list[dict[str, str]]:
    with ROWS_FILE.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _values(row: dict[str, str]) -> dict[str, float]:
    return {k: float(row[k]) for k in ATTACK_KEYS}


TABLE_ROWS = [r for r in _rows() if not r["ERS"].startswith("n/a")]  # metric E rows have no meaningful ERS


def test_rows_file_covers_every_table() -> None:
    sections = {r["section"] for r in TABLE_ROWS}
    assert {"11.1", "11.2", "11.3", "11.4", "11.5", "11.6", "11.7", "11.7c", "11.8"} <= sections
    assert len(TABLE_ROWS) >= 95


@pytest.mark.parametrize("row", TABLE_ROWS, ids=[f"{r['section']} {r['row']}" for r in TABLE_ROWS])
def test_every_published_row(row: dict[str, str]) -> None:
    assert ers(_values(row)) == pytest.approx(float(row["ERS"]), abs=0.1)


def test_worked_example_cub_undefended() -> None:
    raw = dict(zip(ATTACK_KEYS, (0.0, 100.0, 0.0, 99.9, 0.883, 1.762, 0.0, 0.0, 14.1, 0.0)))
    scores = ers_normalize(raw)
    expected = (0.0, 0.0, 0.0, 0.1, 11.7, 11.9, 0.0, 0.0, 14.1, 0.0)
    assert [scores[k] for k in ATTACK_KEYS] == pytest.approx(expected, abs=0.05)
    assert round(ers(raw), 1) == 3.8


def test_worked_example_cub_hm_ics() -> None:
    raw = dict(zip(ATTACK_KEYS, (15.5, 37.7, 16.6, 30.9, 0.753, 0.506, 17.9, 16.7, 27.3, 2.9)))
    expected = (31.0, 62.3, 33.2, 69.1, 24.7, 74.7, 17.9, 16.7, 27.3, 2.9)
    assert [ers_normalize(raw)[k] for k in ATTACK_KEYS] == pytest.approx(expected, abs=0.05)
    assert round(ers(raw), 1) == 36.0


def test_no_clipping_above_fifty() -> None:
    raw = dict.fromkeys(ATTACK_KEYS, 0.0) | {"CA+": 60.0}
    assert ers_normalize(raw)["CA+"] == pytest.approx(120.0)


def test_missing_value_is_a_user_error() -> None:
    raw = dict.fromkeys(ATTACK_KEYS, 1.0)
    del raw["GTT"]
    with pytest.raises(UserError, match="GTT"):
        ers(raw)
