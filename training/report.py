"""Gather evaluated runs into one table (the paper's column order) and the robustness/cost plots.

A run is a directory with robustness.json (from `evaluate`) and, when present, metrics.json / config.json from
training: they provide the method name ("method"), the paper's training cost eta + 1 ("paper_cost") and the
wall time ("train_seconds").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.atomic import atomic_path, atomic_write_json, atomic_write_text
from retrieval.errors import UserError
from retrieval.ers import ATTACK_KEYS
from retrieval.jsonfiles import read_json

BENIGN_COLUMNS = ("R@1", "R@2", "mAP", "NMI")
COLUMNS = (*BENIGN_COLUMNS, *ATTACK_KEYS, "ERS", "cost", "wall_s")
"""Table columns after the run and method names."""
RAW_DECIMALS = {"TMA": 3, "ES:D": 3, "wall_s": 0, "cost": 0}


def load_run(path: str | Path) -> dict[str, Any]:
    """One table row from a run directory (or a robustness.json file)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    robustness = _read_json(directory / "robustness.json", required=True)
    metrics = _read_json(directory / "metrics.json")
    config = _read_json(directory / "config.json")
    benign = robustness.get("benign") or {k: 100.0 * metrics[k] for k in BENIGN_COLUMNS if k in metrics}
    row: dict[str, Any] = {
        "run": directory.name,
        "method": robustness.get("method") or metrics.get("method") or config.get("method") or directory.name,
    }
    row |= {k: benign.get(k) for k in BENIGN_COLUMNS}
    row |= {k: robustness["attacks"].get(k) for k in ATTACK_KEYS}
    row["ERS"] = robustness.get("ERS")
    row["protocol"] = robustness.get("protocol", robustness.get("profile"))
    row["cost"] = metrics.get("paper_cost", config.get("paper_cost"))
    row["wall_s"] = metrics.get("train_seconds")
    if "noise_baseline" in robustness:
        row["noise_ERS"] = robustness["noise_baseline"]["ERS"]
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table in the paper's column order; missing values print as a dash."""
    head = ["run", "method", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row.get("run", "")), str(row.get("method", ""))]
        cells += [_cell(row.get(k), RAW_DECIMALS.get(k, 1)) for k in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def robustness_markdown(report: dict[str, Any], name: str) -> str:
    """robustness.md for one evaluation: the table row, plus the random-noise baseline row when measured."""
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
    return markdown_table(rows) + note


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
    """The evaluation protocol(s) the rows were measured under, as lines under a table."""
    seen = dict.fromkeys(str(r.get("protocol")) for r in rows)
    return "".join(f"\nprotocol: {p}" for p in seen) + "\n"


def plot_tradeoffs(
    rows: list[dict[str, Any]], ers_vs_cost: Path, r1_vs_ers: Path, *, cost: tuple[str, str] = ("cost", "")
) -> list[Path]:
    """The two comparison plots of the paper: ERS against training cost (`cost` = (row key, axis label); the
    paper's eta + 1 by default, e.g. wall seconds for equal-budget studies), and R@1 against ERS."""
    key, label = cost
    return [
        _scatter(rows, key, "ERS", label or "training cost (eta + 1)", "ERS", ers_vs_cost),
        _scatter(rows, "ERS", "R@1", "ERS", "R@1 (%)", r1_vs_ers),
    ]


def _read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    if required and not path.is_file():
        raise UserError(f"{path} not found; run `robust-retrieval evaluate` on that run first")
    return read_json(path, "run", missing_ok=True)


def _cell(value: Any, decimals: int) -> str:
    return "–" if value is None else f"{float(value):.{decimals}f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6, 4.5), dpi=120)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _scatter(rows, x_key: str, y_key: str, x_label: str, y_label: str, path: Path) -> Path:
    """One marker per method; runs missing either value are left out."""
    plt, fig, ax = _figure()
    markers = "osD^v<>pP*Xh"
    methods = sorted({r["method"] for r in rows})
    for i, method in enumerate(methods):
        points = [(r[x_key], r[y_key]) for r in rows if r["method"] == method and None not in (r[x_key], r[y_key])]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, marker=markers[i % len(markers)], s=60, label=method)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _attack_bars(row: dict[str, Any], path: Path) -> Path:
    """The ten raw attack values of one run (TMA and ES:D are raw, so they get their own axis)."""
    plt, fig, ax = _figure()
    percent = [k for k in ATTACK_KEYS if k not in ("TMA", "ES:D")]
    ax.bar(percent, [row[k] or 0.0 for k in percent], color="tab:blue")
    ax.set_ylabel("percent")
    ax.set_ylim(0, 100)
    raw = ax.twinx()
    raw.bar(["TMA", "ES:D"], [row["TMA"] or 0.0, row["ES:D"] or 0.0], color="tab:orange")
    raw.set_ylabel("TMA (cosine), ES:D (distance)")
    raw.set_ylim(0, 2)
    ax.set_title(f"{row['run']} ({row['method']}): ERS {_cell(row['ERS'], 1)}")
    ax.tick_params(axis="x", rotation=45)
    return _save(plt, fig, path)
