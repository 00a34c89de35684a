"""The paper notation <-> DefenseConfig (training/defenses/notation.py)."""

from __future__ import annotations

import pytest

from retrieval.errors import UserError
from training.defenses import DEFENSES, build_defense
from training.defenses import DefenseConfig, validate
from training.defenses.none import NoDefense
from training.defenses.notation import format_method, grammar, parse_method, said


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


@pytest.fixture
def new_defense():
    """A defense added the way a new one is: one class that declares itself (removed from the registry afterwards)."""

    class Clean(NoDefense):
        key, notation = "clean", "CLEAN"
        ics_applies = True  # (wrongly, for a defense without adversary: it shows that the class attribute decides)

    yield Clean
    del DEFENSES["clean"]


def test_a_defense_is_one_class_that_validation_notation_and_build_read(new_defense):
    cfg = parse_method("CLEAN[S]&ICS(0.1)")
    assert (cfg.defense, cfg.source, cfg.destination, cfg.ics) == ("clean", "softhard", None, 0.1)
    assert format_method(cfg) == "CLEAN[S]&ICS(0.1)"
    assert isinstance(build_defense(cfg), new_defense)
    assert "CLEAN[X]" in grammar()
    with pytest.raises(UserError, match="applies to HM only"):
        validate(DefenseConfig(defense="clean", destination="M"))
    with pytest.raises(UserError, match="grammar"):
        parse_method("CLEAN[S,M]")
    new_defense.ics_applies = False
    with pytest.raises(UserError, match="ICS needs an adversarial anchor"):
        validate(cfg)
    with pytest.raises(UserError, match="grammar"):
        parse_method("CLEAN[S]&ICS")


def test_the_notation_says_only_the_method_fields():
    """A method string sets defense, miner, destination, ICS and the adversary's start, early stop and schedule, all
    seven always; nothing else (presets keep eta)."""
    assert said(parse_method("N/A[R]")) == {"defense": "none", "source": "random", "destination": None, "ics": 0.0,
                                           "random_start": False, "early_stop": True, "schedule": "fixed"}
    assert parse_method("HM[S,gLGA]&ICS") == DefenseConfig(defense="hm", source="softhard", destination="lga", ics=0.5)


@pytest.mark.parametrize(("text", "random_start", "early_stop", "schedule"), [
    ("HM[S,gLGA]&ICS+RS", True, True, "fixed"), ("HM[S,gLGA]&ICS+RS+FULL", True, False, "fixed"),
    ("HM[S,gLGA]+FULL", False, False, "fixed"), ("ACT[R]+RS", True, True, "fixed"),
    ("HM[S,2]&ICS+RS+APGD", True, True, "apgd"), ("ACT[R]+APGD", False, True, "apgd"),
])
def test_the_adversary_suffixes_round_trip(text, random_start, early_stop, schedule):
    cfg = parse_method(text)
    assert (cfg.random_start, cfg.early_stop, cfg.schedule) == (random_start, early_stop, schedule)
    assert format_method(cfg) == text


@pytest.mark.parametrize(("text", "why"), [("N/A[R]+RS", "N/A has none"), ("ACT[R]+FULL", "always take all eta"),
                                           ("HM[R,2]+FULL", "always take all eta"), ("N/A[R]+APGD", "N/A has none"),
                                           ("HM[S,gLGA]+FULL+APGD", "says nothing more")])
def test_suffixes_that_change_nothing_are_refused(text, why):
    with pytest.raises(UserError, match=why):
        parse_method(text)
