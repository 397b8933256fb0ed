"""Evaluation: a model (or a non-LLM baseline) over an eval split -> predictions, metrics, report, plot.

    cello eval --model models/tiny data/records/eval/test.jsonl -o outputs/eval/tiny --limit 20
    cello eval --model http://127.0.0.1:8000/v1 data/splits/test.parquet -o outputs/eval/served
    cello eval --baseline outputs/baseline.json data/splits/test.parquet -o outputs/eval/baseline
    cello eval --baseline chance data/splits/test.parquet -o outputs/eval/chance

    from cello.evaluate import evaluate
    result = evaluate("data/records/eval/test.jsonl", "outputs/eval/tiny", model="models/tiny")

The split is eval records (`cello data export --format eval`, .jsonl) or a puzzles table
(`cello data split`, .parquet; prompts rendered with the params' PromptTemplate), or a
directory holding test.jsonl / test.parquet. OUT receives:

- predictions.jsonl: one `cello.scoring.prediction_record` per puzzle plus group, model,
  repaired labels, completion tokens and finish reason. It is a journal: records are appended
  after every chunk (flushed and fsynced), and a rerun skips the ids already in it, so a crash
  loses at most one chunk; a truncated last line (a crash mid-write) is dropped with a warning.
- metrics.json: `cello.scoring.compute_metrics` over the split's puzzles (overall, by N, by
  dataset; raw and repaired; bootstrap intervals; the paper's eval definitions: cell accuracy
  = correct cells / all cells, format rate, uniqueness), plus the model, the split, the chance
  expectation, a fingerprint of the puzzle ids (the gate checks that runs are comparable) and
  timing: load, generation, and everything else (scoring, IO, metrics, report, plot).
- report.md and accuracy_by_n.png (one line per model: this run and every `compare` run).
metrics.json, report.md and the plot are written atomically at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cello._io import append_journal, atomic_path, read_journal, write_json
from cello.config import BackendConfig, EvalConfig, SamplingParams, override
from cello.data import schema as S
from cello.data.evalset import load_eval_items, puzzle_fingerprint
from cello.data.prompt import PromptTemplate
from cello.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "PREDICTIONS", "METRICS", "REPORT", "PLOT", "Predictor", "BackendPredictor", "BaselinePredictor",
    "load_eval_items", "read_predictions", "make_predictor", "puzzle_fingerprint", "evaluate", "EvalResult",
]

PREDICTIONS, METRICS, REPORT, PLOT = "predictions.jsonl", "metrics.json", "report.md", "accuracy_by_n.png"
Progress = Callable[[int], Any]


# ---------------------------------------------------------------- predictors
class Predictor(Protocol):
    """Anything that answers puzzles: `predict` returns (completion, extra record fields) per item."""

    name: str
    kind: str
    chunk_size: int

    def predict(
        self, items: list[dict[str, Any]], progress: Progress | None = None
    ) -> list[tuple[str, dict[str, Any]]]: ...

    def close(self) -> None: ...


class BackendPredictor:
    """An LLM behind a `cello.llm` backend; the first completion of each puzzle is scored."""

    def __init__(self, backend: Any, sampling: SamplingParams, *, name: str, kind: str, chunk_size: int) -> None:
        self.backend, self.sampling, self.name, self.kind, self.chunk_size = backend, sampling, name, kind, chunk_size

    def predict(
        self, items: list[dict[str, Any]], progress: Progress | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        gens = self.backend.generate_full([it["messages"] for it in items], self.sampling, progress=progress)
        return [
            (
                g.texts[0],
                {
                    "completion_tokens": g.completion_tokens,
                    "finish_reason": g.finish_reasons[0] if g.finish_reasons else None,
                },
            )
            for g in gens
        ]

    def close(self) -> None:
        self.backend.close()


class BaselinePredictor:
    """The marker-gene solver or chance, written as a completion in the paper's format."""

    def __init__(self, solver: Any, *, name: str, template: PromptTemplate, chunk_size: int = 256) -> None:
        self.solver, self.name, self.template, self.chunk_size = solver, name, template, chunk_size
        self.kind = "baseline"

    def predict(
        self, items: list[dict[str, Any]], progress: Progress | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        from cello.baselines import MarkerBaseline

        out = []
        for it in items:
            if isinstance(self.solver, MarkerBaseline):
                labels = self.solver.predict(it, template=self.template)
                out.append((MarkerBaseline.completion(labels, template=self.template), {}))
            else:  # chance needs only the candidates
                labels = self.solver.predict(
                    {"id": it["id"], S.CELL_GENES: [[]] * len(it["candidates"]), S.CANDIDATES: it["candidates"]}
                )
                out.append(
                    (
                        self.template.render_answer(
                            labels, reasoning="Chance baseline: a uniformly random valid assignment."
                        ),
                        {},
                    )
                )
            if progress is not None:
                progress(1)
        return out

    def close(self) -> None:
        pass


def make_predictor(
    *,
    model: str | None = None,
    baseline: str | os.PathLike | None = None,
    name: str | None = None,
    backend: BackendConfig | None = None,
    sampling: SamplingParams | None = None,
    template: PromptTemplate | None = None,
    seed: int = 0,
) -> Predictor:
    """A predictor for `model` (a backend spec: DIR, hf:DIR, URL, openai:M@URL, vllm:DIR) or
    `baseline` (a baseline.json from `cello baseline fit`, or 'chance'); exactly one of them."""
    if (model is None) == (baseline is None):
        msg = "give exactly one of --model (a model dir, URL or vllm:DIR) and --baseline (baseline.json or 'chance')."
        raise ConfigError(msg)
    template = template or PromptTemplate()
    if baseline is not None:
        from cello.baselines import ChanceBaseline, MarkerBaseline

        if str(baseline) == "chance":
            return BaselinePredictor(ChanceBaseline(seed), name=name or "chance", template=template)
        return BaselinePredictor(MarkerBaseline.load(baseline), name=name or "marker-baseline", template=template)
    from cello.llm import make_backend, parse_spec

    cfg = override(backend or BackendConfig(), spec=model)
    spec = parse_spec(cfg.spec)
    sampling = sampling or SamplingParams()
    if sampling.n != 1:
        log.warning("eval scores one completion per puzzle; sampling n=%d -> 1", sampling.n)
        sampling = override(sampling, n=1)
    be = make_backend(cfg)
    if spec.kind == "openai-http":
        label, chunk = be.model, 4 * cfg.concurrency  # asks GET /models now: a server that is down fails early
    else:
        label, chunk = Path(spec.target.rstrip("/")).name, (cfg.batch_size if spec.kind == "transformers" else 256)
    return BackendPredictor(be, sampling, name=name or label, kind=spec.kind, chunk_size=chunk)


# ---------------------------------------------------------------- the predictions journal
def read_predictions(path: str | os.PathLike, *, fix_truncated: bool = False) -> list[dict[str, Any]]:
    """Records of a predictions.jsonl (a journal: `cello._io.read_journal`). A last line that is
    not valid JSON (a crash mid-write) is skipped with a warning, and cut from the file when
    `fix_truncated`; a bad line elsewhere is an error."""
    return read_journal(
        path, repair=fix_truncated, what="prediction record", fix="remove that line or rerun with --overwrite"
    )


def _record(item: dict[str, Any], completion: str, extra: dict[str, Any], *, model: str) -> dict[str, Any]:
    from cello.scoring import prediction_record, repair

    fixed = repair(completion, item["candidates"])
    return prediction_record(
        completion,
        item["answer"],
        id=item["id"],
        dataset=item["dataset"],
        n=item["n"],
        candidates=item["candidates"],
        group=item["group"],
        model=model,
        repaired_labels=fixed.labels,
        repaired=fixed.repaired,
        **extra,
    )


def _resume(
    journal: Path, items: list[dict[str, Any]], name: str, *, split: Any, overwrite: bool
) -> dict[str, dict[str, Any]]:
    """The records already in the journal, by id, after checking they belong to this model and split."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        journal.unlink(missing_ok=True)
    done = {r["id"]: r for r in read_predictions(journal, fix_truncated=True)}
    wrong = sorted({str(r.get("model")) for r in done.values()} - {name})
    if wrong:
        msg = f"{journal} holds predictions of {wrong}, not {name!r}; use another --out, or --overwrite to start again."
        raise InputError(msg)
    gold = {it["id"]: it["answer"] for it in items}
    stale = [i for i, r in done.items() if i in gold and [str(a) for a in r.get("answer", [])] != gold[i]]
    if stale:
        msg = (
            f"{journal}: the gold answer of puzzle {stale[0]!r} ({len(stale)} in all) differs from {split}; "
            "the predictions come from another split. Use another --out, or --overwrite."
        )
        raise InputError(msg)
    if set(done) - set(gold):
        log.warning(
            "%s: %d prediction(s) for puzzles outside this split are kept but not scored",
            journal,
            len(set(done) - set(gold)),
        )
    if done:
        log.info("%s: resuming, %d of %d puzzles already predicted", journal, len(set(done) & set(gold)), len(gold))
    return done


# ---------------------------------------------------------------- the run
@dataclass
class EvalResult:
    """What `evaluate` wrote; `metrics` is the content of metrics.json."""

    out: Path
    metrics: dict[str, Any]
    generated: int
    resumed: int

    def render(self) -> str:
        o, m, t = self.metrics["overall"], self.metrics, self.metrics["timing"]
        lines = [
            f"{m['model']}: {o['count']} puzzles ({self.generated} new, {self.resumed} resumed) -> {self.out}",
            f"  batch accuracy {o['batch_accuracy']:.3f} "
            f"[{o['batch_accuracy_ci'][0]:.3f}, {o['batch_accuracy_ci'][1]:.3f}]"
            f"  cell accuracy {o['cell_accuracy']:.3f} [{o['cell_accuracy_ci'][0]:.3f}, {o['cell_accuracy_ci'][1]:.3f}]"
            f"  format {o['format_rate']:.1%}, valid {o['valid_rate']:.1%}",
            f"  repaired: batch {o['repaired_batch_accuracy']:.3f}, cell {o['repaired_cell_accuracy']:.3f}"
            f"   chance: batch {m['chance']['batch_accuracy']:.4f}, cell {m['chance']['cell_accuracy']:.3f}",
            f"  time: {t['wall_s']:.1f} s (load {t['load_s']:.1f}, generation {t['generation_s']:.1f}, "
            f"scoring/IO {t['scoring_io_s']:.1f}; {t['outside_generation_share']:.0%} outside generation)",
        ]
        return "\n".join(lines)


def evaluate(
    split: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    baseline: str | os.PathLike | None = None,
    predictor: Predictor | None = None,
    name: str | None = None,
    backend: BackendConfig | None = None,
    sampling: SamplingParams | None = None,
    cfg: EvalConfig | None = None,
    template: PromptTemplate | None = None,
    compare: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Run `model`, `baseline` or a ready `predictor` over `split`; write predictions, metrics,
    report and plot into `out` (see the module doc). Resumes from `out/predictions.jsonl`
    unless `overwrite`. `compare`: other runs' metrics.json, drawn in the plot and the report."""
    from tqdm.auto import tqdm

    from cello import report as R
    from cello.card import find_card_dir, update_section
    from cello.lineage import data_version_of
    from cello.scoring import chance_set_accuracy, compute_metrics

    t0 = time.perf_counter()
    cfg, template = cfg or EvalConfig(), template or PromptTemplate()
    out = Path(out)
    items = load_eval_items(split, template=template, limit=cfg.limit)
    card_dir = find_card_dir(model)
    others = [
        (R.model_label(m, p), m) for p, m in ((p, R.load_metrics(p)) for p in compare)
    ]  # fail before the model loads
    if predictor is None:
        predictor = make_predictor(
            model=model,
            baseline=baseline,
            name=name,
            backend=backend,
            sampling=sampling,
            template=template,
            seed=cfg.seed,
        )
    elif name:
        predictor.name = name
    load_s = time.perf_counter() - t0
    journal = out / PREDICTIONS
    gen_s = 0.0
    try:
        done = _resume(journal, items, predictor.name, split=split, overwrite=overwrite)
        todo = [it for it in items if it["id"] not in done]
        chunk = cfg.chunk_size or predictor.chunk_size
        with tqdm(
            total=len(items),
            initial=len(items) - len(todo),
            desc=f"eval {predictor.name}",
            unit="puzzle",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            for start in range(0, len(todo), chunk):
                batch = todo[start : start + chunk]
                t = time.perf_counter()
                answers = predictor.predict(batch, progress=bar.update)
                gen_s += time.perf_counter() - t
                recs = [
                    _record(it, text, extra, model=predictor.name)
                    for it, (text, extra) in zip(batch, answers, strict=True)
                ]
                append_journal(journal, recs)
                done.update((r["id"], r) for r in recs)
    finally:
        predictor.close()
    ordered = [done[it["id"]] for it in items]  # split order: metrics do not depend on resume history
    metrics = compute_metrics(ordered, n_boot=cfg.n_boot, seed=cfg.seed, ci=cfg.ci)
    metrics.update(
        {
            "model": predictor.name,
            "kind": predictor.kind,
            "split": str(split),
            "predictions": PREDICTIONS,
            "puzzles": puzzle_fingerprint([it["id"] for it in items]),
            "limit": cfg.limit,
            "sampling": getattr(predictor, "sampling", None) and predictor.sampling.model_dump(),
            "chance": chance_set_accuracy([it["n"] for it in items]),  # expected figures of a random assignment
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_version": data_version_of(split),  # the DVC md5 of the eval records; None: not versioned
            "model_dir": None if card_dir is None else str(card_dir),  # the checkpoint whose card gets the metrics
        }
    )
    runs = [(predictor.name, metrics), *others]
    R.plot_accuracy_by_n(runs, out / PLOT)
    wall = time.perf_counter() - t0
    metrics["timing"] = {
        "wall_s": wall,
        "load_s": load_s,
        "generation_s": gen_s,
        "scoring_io_s": max(wall - load_s - gen_s, 0.0),
        "outside_generation_share": (wall - gen_s) / wall if wall > 0 else 0.0,
        "generated": len(todo),
        "resumed": len(items) - len(todo),
        "note": (
            "wall_s: start to plot written (excludes writing metrics.json and report.md); "
            "outside generation = load + scoring/IO"
        ),
    }
    write_json(metrics, out / METRICS)
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text(R.render_report(metrics, compare=others), encoding="utf-8")
    if card_dir is not None:
        update_section(card_dir, "eval", R.card_section(metrics))
    return EvalResult(out, metrics, len(todo), len(items) - len(todo))
