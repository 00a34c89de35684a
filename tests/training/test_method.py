"""The paper notation <-> DefenseConfig (training/method.py)."""

from __future__ import annotations

import pytest

from retrieval.errors import UserError
from training.defenses.config import DefenseConfig
from training.method import parse_method, format_method


@pytest.mark.parametrize(
    "text, defense, source, destination, ics",
    [
        ("HM[S,gLGA]&ICS", "hm", "softhard", "lga", 0.5),
        ("HM[R,M]", "hm", "random", "semihard", 0.0),
        ("HM[S,-0.1]", "hm", "softhard", "-0.1", 0.0),
        ("HM[S,gB(M)]", "hm", "softhard", "boost:semihard", 0.0),
        ("HM[D,H]", "hm", "distance", "hardest", 0.0),
        ("HM[R,2]", "minmax", "random", None, 0.0),
        ("ACT[R]", "act", "random", None, 0.0),
        ("EST[R]", "est", "random", None, 0.0),
        ("N/A[R]", "none", "random", None, 0.0),
        ("HM[S,gLGA]&ICS(0.05)", "hm", "softhard", "lga", 0.05),
    ],
)
def test_paper_methods_parse_and_round_trip(text, defense, source, destination, ics):
    cfg = parse_method(text)
    assert (cfg.defense, cfg.source, cfg.destination, cfg.ics) == (defense, source, destination, ics)
    assert format_method(cfg) == text


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("HM[ S , g_LGA ] & ICS", "HM[S,gLGA]&ICS"),
        ("HM[S,-0.10]", "HM[S,-0.1]"),
        ("HM[R,2.0]", "HM[R,2]"),
        ("HM[S,g_B(M)]", "HM[S,gB(M)]"),
        ("HM[S,gLGA]&ICS(0.5)", "HM[S,gLGA]&ICS"),
    ],
)
def test_variants_format_canonically(text, canonical):
    assert format_method(parse_method(text)) == canonical


def test_format_accepts_names_letters_and_numeric_hm_min_max():
    assert format_method(DefenseConfig(defense="hm", source="S", destination="boost:M")) == "HM[S,gB(M)]"
    assert format_method(DefenseConfig(defense="hm", source="softhard", destination="2")) == "HM[S,2]"
    assert format_method(DefenseConfig(defense="minmax", source="random", ics=0.5)) == "HM[R,2]&ICS"


@pytest.mark.parametrize(
    "text",
    ["", "HM", "HM[S]", "ACT[R,M]", "HM[S,3]", "HM[S,-2.5]", "HM[Q,M]", "HM[S,gB(Z)]", "HM[S,foo]",
     "ACT[R]&ICS", "N/A[R]&ICS", "HM[S,M]&ICS(-1)", "HM[S,M]&ICS(x)", "hm[s,m]", "HM[S,M]&XYZ"],
)
def test_malformed_methods_show_the_grammar(text):
    with pytest.raises(UserError, match="grammar"):
        parse_method(text)


def test_format_rejects_unknown_defense():
    with pytest.raises(UserError):
        format_method(DefenseConfig(defense="magic"))
