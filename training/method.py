"""The paper's method notation, e.g. "HM[S,gLGA]&ICS", as one option: parse to a DefenseConfig and format back.

Grammar (spaces ignored):

    METHOD := BASE [ "&ICS" [ "(" LAMBDA ")" ] ]          &ICS alone means lambda = 0.5
    BASE   := "N/A[" X "]" | "EST[" X "]" | "ACT[" X "]" | "HM[" X "," DEST "]"
    DEST   := X | NUMBER in [-2, 2] | "gLGA" | "gB(" X ")"   HM[X,2] is the direct min-max
    X      := R | M | S | D | H                              Random, seMihard, Softhard, Distance, Hardest

`format_method` writes the canonical form used in metrics and bundles; parse(format(cfg)) gives cfg's method back.
"""

from __future__ import annotations

import re

from retrieval.errors import UserError
from training.defenses.config import DefenseConfig
from training.miners import LETTERS

DEFAULT_ICS = 0.5
GRAMMAR = (
    'METHOD := BASE["&ICS"["(" lambda ")"]]; BASE := N/A[X] | EST[X] | ACT[X] | HM[X,DEST]; '
    "DEST := X | number in [-2,2] | gLGA | gB(X); X := R|M|S|D|H (e.g. HM[S,gLGA]&ICS)"
)
_PATTERN = re.compile(
    r"(?P<base>N/A|EST|ACT|HM)\[(?P<x>[A-Z])(?:,(?P<dest>[^\]]+))?\]"
    r"(?:&ICS(?:\((?P<ics>[^)]*)\))?(?P<flag>))?"
)
_BASES = {"N/A": "none", "EST": "est", "ACT": "act", "HM": "hm"}
_NAMES = {v: k for k, v in _BASES.items()}
_BOOST = re.compile(r"g_?B\((?P<x>[A-Z])\)")
_NAME_TO_LETTER = {name: letter for letter, name in LETTERS.items()}


def _malformed(text: str, why: str) -> UserError:
    return UserError(f"bad method {text!r} ({why}); grammar: {GRAMMAR}")


def _miner(letter: str, text: str) -> str:
    if letter not in LETTERS:
        raise _malformed(text, f"unknown miner letter {letter!r}")
    return LETTERS[letter]


def _destination(dest: str, text: str) -> str:
    if dest in ("gLGA", "g_LGA"):
        return "lga"
    boost = _BOOST.fullmatch(dest)
    if boost:
        return "boost:" + _miner(boost["x"], text)
    if dest in LETTERS:
        return LETTERS[dest]
    try:
        value = float(dest)
    except ValueError:
        raise _malformed(text, f"unknown destination {dest!r}") from None
    if not -2.0 <= value <= 2.0:
        raise _malformed(text, f"constant destination {value:g} outside [-2, 2]")
    return f"{value:g}"


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


def parse_method(text: str) -> DefenseConfig:
    """Paper notation -> DefenseConfig (defense, source, destination, ics); other fields keep their defaults."""
    match = _PATTERN.fullmatch(text.replace(" ", ""))
    if match is None:
        raise _malformed(text, "does not match the grammar")
    defense, source, dest = _BASES[match["base"]], _miner(match["x"], text), match["dest"]
    if (defense == "hm") != (dest is not None):
        raise _malformed(text, "HM takes [source,destination], the others only [miner]")
    ics = _ics(match, text)
    if ics and defense != "hm":
        raise _malformed(text, "ICS needs an adversarial anchor, i.e. HM")
    if defense != "hm":
        return DefenseConfig(defense=defense, source=source)
    destination = _destination(dest, text)
    if destination == "2":
        return DefenseConfig(defense="minmax", source=source, ics=ics)
    return DefenseConfig(defense="hm", source=source, destination=destination, ics=ics)


def _letter(miner: str) -> str:
    if miner in LETTERS:
        return miner
    if miner not in _NAME_TO_LETTER:
        raise UserError(f"miner {miner!r} has no paper letter; choose one of: {', '.join(_NAME_TO_LETTER)}")
    return _NAME_TO_LETTER[miner]


def _format_destination(dest: str | None) -> str:
    if dest is None:
        raise UserError("HM needs a destination")
    if dest == "lga":
        return "gLGA"
    if dest.startswith("boost:"):
        return f"gB({_letter(dest.removeprefix('boost:'))})"
    try:
        return f"{float(dest):g}"
    except ValueError:
        return _letter(dest)


def format_method(cfg: DefenseConfig) -> str:
    """DefenseConfig -> canonical paper notation, e.g. "HM[S,gLGA]&ICS", "HM[R,2]" for min-max, "N/A[R]"."""
    source = _letter(cfg.source)
    if cfg.defense == "minmax":
        base = f"HM[{source},2]"
    elif cfg.defense == "hm":
        base = f"HM[{source},{_format_destination(cfg.destination)}]"
    elif cfg.defense in _NAMES:
        base = f"{_NAMES[cfg.defense]}[{source}]"
    else:
        raise UserError(f"unknown defense {cfg.defense!r}; choose one of: {', '.join(_BASES.values())}, minmax")
    if cfg.ics:
        base += "&ICS" if cfg.ics == DEFAULT_ICS else f"&ICS({cfg.ics:g})"
    return base
