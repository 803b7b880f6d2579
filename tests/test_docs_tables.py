"""Every interval in a committed headline (docs/*/headline.md) lies inside its quantity's range: a mean in the
range of the quantity (``analysis.summary.value_range``), a paired difference in the range of a difference
(``analysis.compare.difference_range``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from analysis.compare import difference_range
from analysis.summary import value_range

DOCS = Path(__file__).resolve().parents[1] / "docs"
HEADLINES = sorted(DOCS.glob("*/headline.md"))
INTERVAL = re.compile(r"\[(-?[\d.]+(?:e[-+]?\d+)?|-?inf), (-?[\d.]+(?:e[-+]?\d+)?|-?inf)\]")


def tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: rows of cells, the header first, the rule row dropped."""
    found, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            found.append(rows)
            rows = []
    return found


def ranges_of(header: list[str], row: list[str]) -> list[tuple[float, float]]:
    """The range of each cell of ``row``: a comparison table's cells are differences of the row's metric."""
    if header[:2] == ["metric", "variant"]:
        return [difference_range(row[0])] * len(row)
    return [value_range(h.removesuffix(" (band)")) for h in header]


@pytest.mark.parametrize("path", HEADLINES, ids=lambda p: p.parent.name)
def test_every_interval_of_a_committed_headline_lies_in_its_range(path):
    checked = 0
    for table in tables(path.read_text()):
        header, body = table[0], table[1:]
        if header[0] == "step":  # the paired difference per step: the metric is named above the table
            continue
        for row in body:
            for cell, (low, high) in zip(row, ranges_of(header, row)):
                for lo, hi in INTERVAL.findall(cell):
                    lo, hi = float(lo), float(hi)
                    assert low - 1e-9 <= lo <= hi <= high + 1e-9, (path.name, header, row, cell)
                    checked += 1
    assert checked >= 10, f"{path}: too few intervals found to check; has the table format changed?"


def test_the_checker_would_catch_a_cosine_difference_outside_minus_two_two():
    bad = "| metric | variant | d |\n|---|---|---|\n| mean_cos_tfm_tcc | fm | 0.4 [-2.88, 3.7] |\n"
    header, row = tables(bad)[0]
    (low, high), = set(ranges_of(header, row))
    lo, hi = map(float, INTERVAL.findall(row[2])[0])
    assert (low, high) == (-2.0, 2.0) and not (low <= lo and hi <= high)
    assert value_range("mean_cos_tfm_tcc") == (-1.0, 1.0) and value_range("fd_digits 1-NFE")[1] == math.inf
