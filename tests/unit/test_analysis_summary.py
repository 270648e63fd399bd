"""The summary page's verdict table: a short word per variant, the sentence on hover and below,
nested p-value columns under a group header (the browser test measures the layout)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from workflow.analysis.summary import summary_html, verdict_word


def _entry(variant, **kw):
    return {"variant": variant, "winner": False, "disqualified": False, "seed_ignored": None,
            "beats_baseline": False, "vs_baseline": {"p_value": 0.2, "p_value_adjusted": 0.3}, "verdict": "...", **kw}


@pytest.mark.parametrize("entry, word", [
    (_entry("base"), "reference"),
    (_entry("a", winner=True, beats_baseline=True), "WINNER"),
    (_entry("a", disqualified=True, beats_baseline=True), "disqualified"),
    (_entry("a", seed_ignored="the script ignores the seed"), "seed ignored"),
    (_entry("a", verdict="not significantly better ...; cannot win: base: the script ignores the seed"), "cannot win"),
    (_entry("a", vs_baseline=None), "not testable"),
    (_entry("a", beats_baseline=True), "significant, no win"),
    (_entry("a"), "not significant"),
])
def test_verdict_word(entry, word):
    assert verdict_word(entry, "base") == word


def test_summary_html_verdict_cells_carry_their_sentence(tmp_path):
    figure = tmp_path / "f.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    long = "WINNER: significantly better than base (paired, p=1e-07, holm-adjusted p=2e-07, alpha 0.01)"
    verdict = {"baseline": "base", "winners": ["a"], "results": [
        {"variant": "base", "n": 3, "mean": 2.0, "std": 0.1, "vs_baseline": None, "verdict": "reference"},
        {"variant": "a", "n": 3, "mean": 1.9, "std": 0.1, "winner": True, "beats_baseline": True,
         "vs_baseline": {"p_value": 1e-7, "p_value_adjusted": 2e-7}, "verdict": long}]}
    page = summary_html("s", verdict, [], pd.DataFrame({"stage": ["A"]}), figure)
    assert re.search(r'<td class="text word" title="WINNER: significantly[^"]*">WINNER</td>', page)
    assert f"<li><strong>a</strong>: {long}</li>" in page
    assert '<th class="group" colspan="2">vs_<wbr>baseline</th>' in page  # p_value, p_value_adjusted under it
    assert 'title="vs_baseline.p_value_adjusted">p_<wbr>value_<wbr>adjusted</th>' in page
