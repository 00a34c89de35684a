"""Gather evaluated runs into one table (the paper's column order) and the robustness/cost plots.

A run is a directory with robustness.json (the profile's published attacker) and/or robustness-strong.json (the
strong attacker), both from `evaluate`, and, when present, metrics.json / config.json from training: they provide
the method name ("method"), the paper's training cost eta + 1 ("paper_cost") and the wall time ("train_seconds").
The strong attacker's ERS sits beside the published one ("ERS strong") because most of what a model gains under the
published 32-step protocol can vanish under a stronger attacker (issue 20): a table shows both, each with its
protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.atomic import atomic_path, atomic_write_json, atomic_write_text
from retrieval.attacks import MEASURES
from retrieval.errors import UserError
from retrieval.jsonfiles import read_json
from retrieval.robustness.ers import ATTACK_KEYS

BENIGN_COLUMNS = ("R@1", "R@2", "mAP", "NMI")
COLUMNS = (*BENIGN_COLUMNS, *ATTACK_KEYS, "ERS", "ERS strong", "cost", "wall_s")
"""Table columns after the run and method names; the attack values and "ERS" are the published protocol's."""
RAW_DECIMALS = {**{key: 3 for key, measure in MEASURES.items() if measure.unit != "%"}, "wall_s": 0, "cost": 0}
"""Decimals of the columns not printed with one: raw attack values (a cosine, a distance) and whole numbers."""
STRONG = " strong"
"""Suffix of a row's keys measured under the strong attacker ("ERS strong", "protocol strong", ...)."""


def load_run(path: str | Path) -> dict[str, Any]:
    """One table row from a run directory (or one of its robustness json files)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    published = _read_json(directory / "robustness.json")
    strong = _read_json(directory / "robustness-strong.json")
    if not (published or strong):
        raise UserError(f"{directory / 'robustness.json'} not found; run `robust-retrieval evaluate` on that run first")
    metrics = _read_json(directory / "metrics.json")
    config = _read_json(directory / "config.json")
    either = published or strong  # `evaluate --strong` alone writes only the strong record
    benign = either.get("benign") or {k: 100.0 * metrics[k] for k in BENIGN_COLUMNS if k in metrics}
    row: dict[str, Any] = {
        "run": directory.name,
        "method": either.get("method") or metrics.get("method") or config.get("method") or directory.name,
    }
    row |= {k: benign.get(k) for k in BENIGN_COLUMNS}
    row |= {k: published.get("attacks", {}).get(k) for k in ATTACK_KEYS}
    row["ERS"] = published.get("ERS")
    row["protocol"] = published.get("protocol", published.get("profile"))
    row["profile"] = either.get("profile")
    row["normalized"] = published.get("normalized")
    row["ERS" + STRONG] = strong.get("ERS")
    row["protocol" + STRONG] = strong.get("protocol")
    row["normalized" + STRONG] = strong.get("normalized")
    row["cost"] = metrics.get("paper_cost", config.get("paper_cost"))
    row["wall_s"] = metrics.get("train_seconds")
    if "noise_baseline" in published:
        row["noise_ERS"] = published["noise_baseline"]["ERS"]
    return row


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A Markdown table in the paper's column order; missing values print as a dash."""
    head = ["run", "method", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row.get("run", "")), str(row.get("method", ""))]
        cells += [_cell(row.get(k), RAW_DECIMALS.get(k, 1)) for k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def robustness_markdown(report: dict[str, Any], name: str) -> str:
    """robustness.md for one evaluation: the table row, plus the random-noise baseline row when measured. One
    evaluation has one protocol, named under the table, so its ERS stays in the one "ERS" column."""
    row = {"run": name, "method": report.get("method") or name, **report["benign"], **report["attacks"],
           "ERS": report["ERS"]}
    rows = [row]
    if "noise_baseline" in report:
        noise = report["noise_baseline"]
        rows.append({"run": f"{name} (uniform noise)", "method": row["method"], **report["benign"],
                     **noise["attacks"], "ERS": noise["ERS"]})
    c = report["config"]
    low, high = report.get("ERS_ci95", (float("nan"), float("nan")))
    note = (f"\nprotocol: {report.get('protocol', report['profile'])}; {c['queries']} queries against a gallery of "
            f"{c['gallery_size']}, seed {c['seed']}; ERS 95% bootstrap interval over queries {low:.1f}-{high:.1f}.\n")
    return markdown_table(rows, tuple(k for k in COLUMNS if k != "ERS" + STRONG)) + note


def write_report(runs: list[str | Path], out: str | Path) -> list[Path]:
    """report.md, report.json, ers_vs_cost.png, r1_vs_ers.png and one attacks_<run>.png per run, into `out`."""
    if not runs:
        raise UserError("report needs at least one run directory")
    rows = [load_run(r) for r in runs]
    out = Path(out)
    written = [out / "report.md", out / "report.json"]
    atomic_write_text(written[0], markdown_table(rows) + protocols_note(rows))
    atomic_write_json(written[1], rows)
    written += plot_tradeoffs(rows, out / "ers_vs_cost.png", out / "r1_vs_ers.png")
    for row in rows:
        written.append(_attack_bars(row, out / f"attacks_{_slug(row['run'])}.png"))
    return written


def protocols_note(rows: list[dict[str, Any]]) -> str:
    """The evaluation protocol(s) the rows were measured under, as lines under a table, one per ERS column."""
    seen = dict.fromkeys(f"\nprotocol ({column}): {row[key]}"
                         for column, key in (("ERS", "protocol"), ("ERS" + STRONG, "protocol" + STRONG))
                         for row in rows if row.get(key))
    return "".join(seen) + "\n"


def plot_tradeoffs(
    rows: list[dict[str, Any]], ers_vs_cost: Path, r1_vs_ers: Path, *, cost: tuple[str, str] = ("cost", "")
) -> list[Path]:
    """The two comparison plots of the paper: ERS against training cost (`cost` = (row key, axis label); the
    paper's eta + 1 by default, e.g. wall seconds for equal-budget studies), and R@1 against ERS. Runs evaluated
    under the strong attacker add a hollow marker at their strong ERS."""
    key, label = cost
    return [
        _scatter(scatter_series(rows, key, "ERS"), label or "training cost (eta + 1)", "ERS", ers_vs_cost),
        _scatter(scatter_series(rows, "ERS", "R@1"), "ERS", "R@1 (%)", r1_vs_ers),
    ]


def scatter_series(rows: list[dict[str, Any]], x_key: str, y_key: str) -> list[dict[str, Any]]:
    """The marker series of one comparison plot: per method, its points under the published protocol and, where
    measured, under the strong attacker ("ERS" read as "ERS strong"); runs missing either value are left out."""
    series = []
    for index, method in enumerate(sorted({r["method"] for r in rows})):
        for strong in (False, True):
            keys = [k + STRONG if strong and k == "ERS" else k for k in (x_key, y_key)]
            points = [(r.get(keys[0]), r.get(keys[1])) for r in rows if r["method"] == method]
            points = [p for p in points if None not in p]
            if points:
                xs, ys = zip(*points)
                series.append({"label": f"{method}, strong attacker" if strong else method, "method_index": index,
                               "strong": strong, "x": list(xs), "y": list(ys)})
    return series


def attack_scores(row: dict[str, Any]) -> dict[str, list[float]]:
    """The bars of attacks_<run>.png, per protocol measured: the ten normalised per-attack scores (the terms ERS
    averages, higher = more robust for every attack, unlike the raw values where a high CA+ is good and a high CA-
    bad), then ERS itself. Keys are the protocol names ("rob28", "strong")."""
    return {name: [*(row["normalized" + suffix][k] for k in ATTACK_KEYS), row["ERS" + suffix]]
            for name, suffix in _measured(row)}


def _measured(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(protocol name, row key suffix) of each protocol the run was evaluated under."""
    named = ((row.get("profile") or "published", ""), ("strong", STRONG))
    return [(name, suffix) for name, suffix in named if row.get("normalized" + suffix)]


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path, "run", missing_ok=True)


def _cell(value: Any, decimals: int) -> str:
    return "–" if value is None else f"{float(value):.{decimals}f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _figure(size: tuple[float, float] = (6, 4.5)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=size, dpi=120)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _scatter(series: list[dict[str, Any]], x_label: str, y_label: str, path: Path) -> Path:
    """One marker shape and colour per method; filled = published protocol, hollow = strong attacker."""
    plt, fig, ax = _figure()
    markers = "osD^v<>pP*Xh"
    for s in series:
        colour = f"C{s['method_index'] % 10}"
        ax.scatter(s["x"], s["y"], marker=markers[s["method_index"] % len(markers)], s=60, label=s["label"],
                   facecolors="none" if s["strong"] else colour, edgecolors=colour)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _attack_bars(row: dict[str, Any], path: Path) -> Path:
    """Grouped bars of `attack_scores`, one colour per protocol, with each ERS as a dashed reference line."""
    plt, fig, ax = _figure((8, 4.5))
    bars = attack_scores(row)
    labels = [*ATTACK_KEYS, "ERS"]
    width = 0.8 / len(bars)
    for i, (name, values) in enumerate(bars.items()):
        offsets = [x - 0.4 + width * (i + 0.5) for x in range(len(labels))]
        drawn = ax.bar(offsets, values, width, color=f"C{i}", label=f"{name}: ERS {_cell(values[-1], 1)}")
        drawn[-1].set_hatch("//")
        ax.axhline(values[-1], color=f"C{i}", linestyle="--", linewidth=1)
    top = max(v for values in bars.values() for v in values)
    ax.set_ylim(0, max(100.0, top) * 1.05)  # CA+/QA+ above 50 score above 100 (nothing is clipped)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("normalised score (higher = more robust)")
    ax.set_title(f"{row['run']} ({row['method']}): per-attack scores that ERS averages, and ERS")
    ax.set_xlabel("\n".join(f"{name}: {row['protocol' + suffix]}" for name, suffix in _measured(row)), fontsize=7)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
