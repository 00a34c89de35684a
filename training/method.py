"""The paper's method notation, e.g. "HM[S,gLGA]&ICS", as the `--method` option reads it.

The grammar, the parser and the formatter live with the defenses whose class attributes they read
(training/defenses/notation.py); this is their import path for the CLI, the benchmarks and the tests.
"""

from training.defenses.notation import format_method, grammar, parse_method, said

__all__ = ["format_method", "grammar", "parse_method", "said"]
