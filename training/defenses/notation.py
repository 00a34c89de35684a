"""The paper's method notation, e.g. "HM[S,gLGA]&ICS": parse to a DefenseConfig and format back.

Grammar (spaces ignored):

    METHOD := BASE [ "&ICS" [ "(" LAMBDA ")" ] ] [ "+RS" ] [ "+FULL" ] [ "+APGD" ]
                                    &ICS alone means lambda = 0.5; +RS: the adversary starts at a random point of
                                    the ball; +FULL: HM's adversary takes all eta steps (no early stop); +APGD: the
                                    adversary steps with APGD's adaptive step size (all eta steps)
    BASE   := NOTATION "[" X "]" | NOTATION "[" X "," DEST "]"   each defense's class declares its NOTATION
    DEST   := X | NUMBER in [-2, 2] | "gLGA" | "gB(" X ")"
    X      := R | M | S | D | H | B                          Random, seMihard, Softhard, Distance, Hardest, Blend

The bases come from the registry (training/defenses/base.py:DEFENSES): N/A[X], EST[X], ACT[X], HM[X,DEST]; a
defense with a `fixed_destination` (min-max, HM[X,2]) is what its notation with that destination parses to.
`format_method` writes the canonical form used in metrics and bundles; parse(format(cfg)) gives cfg's method back.
"""

from __future__ import annotations

import re
from typing import Any

from retrieval.errors import UserError
from training.defenses.base import DEFENSES
from training.defenses.config import DefenseConfig
from training.defenses.destinations import destination_from_notation, destination_grammar, destination_notation
from training.miners import LETTERS, paper_letter

DEFAULT_ICS = 0.5
METHOD_FIELDS = ("defense", "source", "destination", "ics", "random_start", "early_stop", "schedule")
"""What a method string says, always all seven (e.g. "N/A[R]" says: no defense, Random, no destination, no ICS, clean
start, early stop where it applies, fixed steps), so a
method can restore a default that a preset changed; every other DefenseConfig field is not the notation's to set."""

_PATTERN = re.compile(
    r"(?P<base>[^\[&]+)\[(?P<x>[A-Z])(?:,(?P<dest>[^\]]+))?\]"
    r"(?:&ICS(?:\((?P<ics>[^)]*)\))?(?P<flag>))?"
    r"(?P<rs>\+RS)?(?P<full>\+FULL)?(?P<apgd>\+APGD)?"
)


def grammar() -> str:
    """The grammar in one line, with the bases of the registered defenses and the forms of the destinations."""
    bases = " | ".join(dict.fromkeys(f"{cls.notation}[X,DEST]" if _shows_destination(cls) else f"{cls.notation}[X]"
                                     for cls in DEFENSES.values()))
    return (f'METHOD := BASE["&ICS"["(" lambda ")"]]["+RS"]["+FULL"]["+APGD"]; BASE := {bases}; '
            f"DEST := {destination_grammar()}; X := {'|'.join(LETTERS)} (e.g. HM[S,gLGA]&ICS)")


def said(cfg: DefenseConfig) -> dict[str, Any]:
    """The fields of a parsed method that its string said (METHOD_FIELDS)."""
    return {name: getattr(cfg, name) for name in METHOD_FIELDS}


def parse_method(text: str) -> DefenseConfig:
    """Paper notation -> DefenseConfig of what the string said (METHOD_FIELDS); other fields keep their defaults."""
    match = _PATTERN.fullmatch(text.replace(" ", ""))
    if match is None:
        raise _malformed(text, "does not match the grammar")
    family = [cls for cls in DEFENSES.values() if cls.notation == match["base"]]
    if not family:
        raise _malformed(text, f"unknown method {match['base']!r}")
    source = _miner(match["x"], text)
    if any(map(_shows_destination, family)) != (match["dest"] is not None):
        raise _malformed(text, "HM takes [source,destination], the others only [miner]")
    destination = None if match["dest"] is None else _destination(match["dest"], text)
    fixed = [cls for cls in family if cls.fixed_destination is not None and cls.fixed_destination == destination]
    defense = fixed[0] if fixed else next(cls for cls in family if cls.fixed_destination is None)
    ics = _ics(match, text)
    if ics and not defense.ics_applies:
        raise _malformed(text, "ICS needs an adversarial anchor, i.e. HM")
    if (match["rs"] or match["full"] or match["apgd"]) and defense.key == "none":
        raise _malformed(text, "+RS, +FULL and +APGD change an adversary; N/A has none")
    if match["full"] and not defense.takes_destination:
        raise _malformed(text, "+FULL turns off HM's early stop; the other adversaries always take all eta steps")
    if match["full"] and match["apgd"]:
        raise _malformed(text, "+APGD always takes all eta steps; +FULL says nothing more")
    return DefenseConfig(
        defense=defense.key, source=source, destination=destination if defense.takes_destination else None, ics=ics,
        random_start=match["rs"] is not None, early_stop=match["full"] is None,
        schedule="apgd" if match["apgd"] else "fixed",
    )


def format_method(cfg: DefenseConfig) -> str:
    """DefenseConfig -> canonical paper notation, e.g. "HM[S,gLGA]&ICS", "HM[R,2]" for min-max, "N/A[R]"."""
    defense = DEFENSES.lookup(cfg.defense)
    inside = paper_letter(cfg.source)
    if defense.fixed_destination is not None:
        inside += f",{defense.fixed_destination}"
    elif defense.takes_destination:
        inside += f",{destination_notation(cfg.destination)}"
    text = f"{defense.notation}[{inside}]"
    if cfg.ics:
        text += "&ICS" if cfg.ics == DEFAULT_ICS else f"&ICS({cfg.ics:g})"
    if cfg.random_start:
        text += "+RS"
    if not cfg.early_stop and defense.takes_destination and cfg.schedule != "apgd":
        text += "+FULL"
    if cfg.schedule == "apgd":
        text += "+APGD"
    return text


def _shows_destination(cls) -> bool:
    return cls.takes_destination or cls.fixed_destination is not None


def _malformed(text: str, why: str) -> UserError:
    return UserError(f"bad method {text!r} ({why}); grammar: {grammar()}")


def _miner(letter: str, text: str) -> str:
    if letter not in LETTERS:
        raise _malformed(text, f"unknown miner letter {letter!r}")
    return LETTERS[letter]


def _destination(dest: str, text: str) -> str:
    try:
        return destination_from_notation(dest)
    except ValueError as why:
        raise _malformed(text, str(why)) from None


def _ics(match: re.Match, text: str) -> float:
    if match["flag"] is None:
        return 0.0
    if match["ics"] is None:
        return DEFAULT_ICS
    try:
        value = float(match["ics"])
    except ValueError:
        raise _malformed(text, f"ICS weight {match['ics']!r} is not a number") from None
    if value <= 0:
        raise _malformed(text, "ICS weight must be > 0")
    return value
