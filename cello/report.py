"""Human-readable views of eval metrics: a Markdown report and a plot of accuracy by N.

    cello eval plot outputs/eval/tiny/metrics.json outputs/eval/baseline/metrics.json -o by_n.png

    from cello.report import load_metrics, render_report, plot_accuracy_by_n
    plot_accuracy_by_n([("tiny", load_metrics("a/metrics.json"))], "by_n.png")

Inputs are metrics.json files written by `cello eval` (cello.evaluate); the plot draws one
line per model with its bootstrap 95% band, and chance (1/N per cell, 1/N! per batch).
matplotlib runs on the Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cello._io import atomic_path
from cello.errors import InputError

__all__ = ["load_metrics", "model_label", "data_version_line", "render_report", "card_section", "plot_accuracy_by_n",
           "PAPER", "paper_table"]

Run = tuple[str, Mapping[str, Any]]  # (label, metrics)


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A metrics.json written by `cello eval`; an InputError names the file and the fix."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{path}: cannot read eval metrics ({exc}); pass a metrics.json written by `cello eval`."
        raise InputError(msg) from exc
    if not isinstance(data, dict) or not isinstance(data.get("overall"), dict) or "by_n" not in data:
        msg = f"{path}: not eval metrics (no 'overall'/'by_n'); pass a metrics.json written by `cello eval`."
        raise InputError(msg)
    return data


def model_label(metrics: Mapping[str, Any], path: str | os.PathLike | None = None) -> str:
    """The model's name from its metrics, else the name of the run's directory."""
    return str(metrics.get("model") or (Path(path).resolve().parent.name if path else "model"))


# ---------------------------------------------------------------- Markdown
def data_version_line(version: Mapping[str, Any] | None) -> str:
    """What data a figure was computed on: the DVC data version of the eval records."""
    if not version:
        return "data version: not versioned (no dvc.lock lists the eval records)"
    if version.get("source"):  # a published dataset imported from the Hub (cello.data.hub)
        return f"data version: `{version.get('version')}` ({version.get('source')}, `{version.get('records')}`)"
    return (f"data version: `{version.get('version')}` (DVC md5 of `{version.get('records')}`: "
            f"`{version.get('md5')}`)")


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(group: Mapping[str, Any], key: str) -> str:
    lo, hi = group.get(f"{key}_ci") or (None, None)
    return f"{_f(group.get(key))} [{_f(lo)}, {_f(hi)}]"


_HEAD = ("| {first} | puzzles | cell acc. [95% CI] | batch acc. [95% CI] | cell acc. per puzzle | format "
         "| valid (reward) | unique labels | repaired cell | repaired batch | repair rate | mean reward |\n"
         "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _row(label: str, g: Mapping[str, Any]) -> str:
    if not g.get("count"):
        return f"| {label} | 0 |" + " - |" * 10
    # .get: metrics.json files written before valid_rate / cell_accuracy_macro existed still render
    return (f"| {label} | {g['count']} | {_ci(g, 'cell_accuracy')} | {_ci(g, 'batch_accuracy')} "
            f"| {_f(g.get('cell_accuracy_macro'))} | {_pct(g.get('format_rate'))} | {_pct(g.get('valid_rate'))} "
            f"| {_pct(g.get('label_uniqueness'))} | {_f(g.get('repaired_cell_accuracy'))} "
            f"| {_f(g.get('repaired_batch_accuracy'))} | {_pct(g.get('repair_rate'))} | {_f(g.get('mean_reward'))} |")


def render_report(metrics: Mapping[str, Any], *, compare: Sequence[Run] = ()) -> str:
    """The Markdown report of one run (overall, by N, by dataset), plus a table of `compare` runs."""
    m, o = metrics, metrics["overall"]
    lines = [f"# Evaluation: {m.get('model', 'model')}", ""]
    lines.append(f"- split: `{m.get('split', '?')}`: {o.get('count', 0)} puzzles, {o.get('cells', 0)} cells "
                 f"(ids fingerprint `{m.get('puzzles', '?')}`{', limit ' + str(m['limit']) if m.get('limit') else ''})")
    samp = m.get("sampling") or {}
    sampled = f"; max_new_tokens {samp.get('max_new_tokens')}, temperature {samp.get('temperature')}" if samp else ""
    kind = f"{m.get('kind', '?')}{sampled}"
    lines.append(f"- model: {m.get('model', '?')} ({kind})")
    lines.append(f"- {data_version_line(m.get('data_version'))}")
    if m.get("chance"):
        lines.append(f"- chance (expected): cell accuracy {_f(m['chance']['cell_accuracy'])}, "
                     f"batch accuracy {_f(m['chance']['batch_accuracy'], 4)}")
    t = m.get("timing")
    if t:
        lines.append(f"- time: {t['wall_s']:.1f} s: load {t['load_s']:.1f} s, generation {t['generation_s']:.1f} s, "
                     f"scoring/IO {t['scoring_io_s']:.1f} s ({t['outside_generation_share']:.0%} outside generation); "
                     f"{t['generated']} puzzles generated, {t['resumed']} resumed")
    lines += [
        "",
        "Definitions follow the paper's released eval and reward code (cello.scoring). Cell accuracy: correct "
        "cells / all cells (micro; an answer in an illegitimate format scores 0 and keeps its cells; a legitimate "
        "one is compared position by position); per puzzle: the mean of per-puzzle shares. Batch accuracy: share "
        "of puzzles with every cell right. Format: share in the legitimate format (think block, one newline, "
        "answer block, '|' in the answer line); valid (reward): share whose GRPO reward is not -1 (also N labels, "
        "none repeated). Unique labels: mean share of distinct labels. Repaired: the same after turning each "
        "answer into a valid assignment by optimal matching. Intervals: percentile bootstrap over puzzles "
        "(ratio of sums for cell accuracy).",
        "", "## Overall and by N", "", _HEAD.format(first="set"), _row("**overall**", o),
    ]
    lines += [_row(f"N = {n}", g) for n, g in sorted(m.get("by_n", {}).items(), key=lambda kv: int(kv[0]))]
    if len(m.get("by_dataset", {})) > 1 or compare:
        lines += ["", "## By dataset", "", _HEAD.format(first="dataset")]
        lines += [_row(d or "(none)", g) for d, g in m.get("by_dataset", {}).items()]
    if compare:
        lines += ["", "## Compared runs", "", _HEAD.format(first="model"), _row(f"**{m.get('model', 'this run')}**", o)]
        lines += [_row(label, other["overall"]) for label, other in compare]
    lines.append("")
    return "\n".join(lines)


# The paper's figures on the published test split (Cell-o1, arXiv 2506.02911): o1's batch
# accuracy, and Cell-o1's, reported as outperforming o1 by over 73% (so above 19.0% x 1.73).
PAPER = {"o1": (0.190, "19.0%"), "Cell-o1": (0.190 * 1.73, "> 32.9% (o1 + over 73%)")}


def _paper_figure(label: str) -> str:
    key = next((k for k in PAPER if label.strip().lower().startswith(k.lower())), None)
    return PAPER[key][1] if key else "-"


def paper_table(runs: Sequence[Run], *, data: Mapping[str, Any] | None = None,
                audit: Mapping[str, Any] | None = None, notes: Sequence[str] = ()) -> str:
    """The reproduction table: each measured run beside the paper's figure for that model, the
    paper's own rows, then the leakage audit of the published split (`audit.json` of a Hub
    import: {"train": AuditReport, "reasoning": ...}) and `notes` (e.g. what was skipped)."""
    lines = ["# Cell-o1 reproduction on the published CellPuzzles test split", ""]
    if data:
        lines += [f"Data: {data.get('source')} (version `{data.get('version')}`); splits {data.get('splits')}.", ""]
    lines += ["| model | from | puzzles | batch accuracy [95% CI] | cell accuracy [95% CI] | format | paper |",
              "|---|---|--:|--:|--:|--:|--:|"]
    def pct_ci(o: Mapping[str, Any], key: str) -> str:
        lo, hi = o.get(f"{key}_ci") or (None, None)
        return f"{_pct(o.get(key))} [{_pct(lo)}, {_pct(hi)}]"

    for label, m in runs:
        o = m["overall"]
        lines.append(f"| {label} | measured here | {o.get('count', 0)} | {pct_ci(o, 'batch_accuracy')} "
                     f"| {pct_ci(o, 'cell_accuracy')} | {_pct(o.get('format_rate'))} | {_paper_figure(label)} |")
    lines += [f"| {name} | the paper | - | {text} | - | - | {text} |" for name, (_, text) in PAPER.items()]
    if audit:
        lines += ["", "Leakage audit of the published split (test puzzles with a cell whose ranked gene list is "
                  "also in the other split):", "", "| against | test puzzles affected | test cells affected "
                  "| gene lists in both |", "|---|--:|--:|--:|"]
        for side, r in audit.items():
            share = r["test_sharing_identical_cell"] / max(r["test_puzzles"], 1)
            lines.append(f"| {side} ({r['train_puzzles']} puzzles) | {r['test_sharing_identical_cell']} of "
                         f"{r['test_puzzles']} ({share:.1%}) | {r['test_cells_identical']} of {r['test_cells']} "
                         f"| {r['shared_gene_lists']} |")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def card_section(metrics: Mapping[str, Any]) -> str:
    """The eval section of a model card: the figures with their intervals, overall and by N."""
    m, o = metrics, metrics["overall"]
    lines = ["## Evaluation", "",
             f"- split `{m.get('split', '?')}`: {o.get('count', 0)} puzzles (ids fingerprint `{m.get('puzzles', '?')}`"
             f"{', limit ' + str(m['limit']) if m.get('limit') else ''}), evaluated {m.get('created', '?')}",
             f"- {data_version_line(m.get('data_version'))}", "",
             "Intervals: bootstrap 95% over puzzles; definitions as the paper's released eval code.", "",
             _HEAD.format(first="set"), _row("**overall**", o)]
    lines += [_row(f"N = {n}", g) for n, g in sorted(m.get("by_n", {}).items(), key=lambda kv: int(kv[0]))]
    return "\n".join(lines)


# ---------------------------------------------------------------- plot
def plot_accuracy_by_n(runs: Sequence[Run], out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Cell and batch accuracy by N, one line (with its 95% band) per run; written atomically (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cello.scoring import chance_expected_accuracy

    if not runs:
        msg = "plot_accuracy_by_n(): no runs to plot; pass at least one metrics.json."
        raise InputError(msg)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    all_n: set[int] = set()
    for label, metrics in runs:
        groups = sorted(((int(n), g) for n, g in metrics.get("by_n", {}).items() if g.get("count")), key=lambda x: x[0])
        if not groups:
            continue
        ns = [n for n, _ in groups]
        all_n.update(ns)
        for ax, key in zip(axes, ("cell_accuracy", "batch_accuracy"), strict=True):
            label_n = f"{label} (n={metrics['overall'].get('count', '?')})"
            line = ax.plot(ns, [g[key] for _, g in groups], marker="o", label=label_n)[0]
            lo = [g.get(f"{key}_ci", [g[key]] * 2)[0] for _, g in groups]
            hi = [g.get(f"{key}_ci", [g[key]] * 2)[1] for _, g in groups]
            ax.fill_between(ns, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if all_n:
        ns = sorted(all_n)
        chance = [chance_expected_accuracy(n) for n in ns]
        axes[0].plot(ns, [c.cell for c in chance], "k:", label="chance (expected)")
        axes[1].plot(ns, [c.batch for c in chance], "k:", label="chance (expected)")
        axes[0].set_xticks(ns)
    for ax, what in zip(axes, ("cell-level accuracy", "batch-level accuracy"), strict=True):
        ax.set_xlabel("N (cells per puzzle)")
        ax.set_ylabel(what)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title or "Accuracy by puzzle size (bands: bootstrap 95% CI)")
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out
