"""The promotion gate: deploy a candidate only if it clears the floor, does not regress against
the incumbent, and beats the non-LLM baseline. Thresholds: `gate:` in params.yaml.

    cello eval gate --candidate outputs/eval/cand/metrics.json --incumbent outputs/eval/prod/metrics.json \\
        --baseline outputs/eval/baseline/metrics.json -o outputs/gate/decision.json [--fail-on-reject]

    from cello.gate import gate
    decision = gate("cand/metrics.json", incumbent="prod/metrics.json", baseline="base/metrics.json")
    decision.passed, decision.reasons

    cello eval gate --candidate outputs/eval/cand/metrics.json --incumbent hf://ncbi/Cell-o1 ...
        # a model as the incumbent: evaluated first on the candidate's split, into OUT's folder/incumbent/

Every rule compares `gate.metric` (default batch_accuracy, the paper's headline figure):
- coverage: the candidate was scored on at least `min_puzzles` puzzles, and on the same puzzles
  as the incumbent and the baseline (the metrics' id fingerprints match).
- min_accuracy: candidate >= `min_accuracy`.
- no_regression: paired bootstrap over the puzzles both models answered (per-puzzle values
  from the two predictions.jsonl, rescored and aligned by id), interval of candidate -
  incumbent: for batch accuracy the mean of per-puzzle differences; for cell accuracy the
  difference of the two ratios of sums (correct cells / cells, as the paper's micro figure)
  in every resample of puzzles.
  'significant' (default): fail when the upper bound < -tolerance, i.e. the data show a drop
  larger than the tolerance; small eval sets then cannot block a release on noise alone.
  'non_inferiority': pass only when the lower bound >= -tolerance, i.e. the data show the drop
  is at most the tolerance (stricter; needs enough puzzles). No incumbent: passes (first
  deployment). Without predictions: fails when `require_paired`, else compares point estimates.
- beats_baseline: candidate > baseline + `baseline_margin` (point estimates).
The decision JSON lists every rule with its value, threshold, verdict and a sentence.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cello._io import write_json
from cello.config import GateConfig
from cello.errors import InputError
from cello.report import load_metrics, model_label

log = logging.getLogger(__name__)

__all__ = ["Reason", "Decision", "gate", "incumbent_metrics", "per_puzzle"]

# gate.metric -> (ScoredSet field of per-puzzle values, field of their denominators): the metric
# is sum(values) / sum(denominators) over puzzles, or the mean of the values when None.
PER_PUZZLE: dict[str, tuple[str, str | None]] = {
    "batch_accuracy": ("exact", None), "cell_accuracy": ("correct_cells", "n"),
    "repaired_batch_accuracy": ("repaired_exact", None), "repaired_cell_accuracy": ("repaired_correct_cells", "n"),
}


@dataclass
class Reason:
    """One rule's verdict: `value` is compared with `threshold`; `detail` holds the evidence."""

    rule: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    passed: bool
    metric: str
    reasons: list[Reason]
    candidate: str
    candidate_model: str
    incumbent: str | None
    baseline: str | None
    config: dict[str, Any]
    data_version: str | None = None  # the DVC data version of the candidate's eval records
    data_versions: dict[str, str | None] = field(default_factory=dict)  # every input's, by role

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The decision as Markdown: the verdict, the data version, one row per rule."""
        def num(x: Any) -> str:
            return "-" if x is None else f"{x:.4f}"

        head = "PASS: the candidate may be deployed" if self.passed else "REJECT: the candidate is not deployed"
        rows = [f"| {r.rule} | {'pass' if r.passed else '**FAIL**'} | {num(r.value)} | {num(r.threshold)} "
                f"| {r.message.replace('|', '/')} |" for r in self.reasons]
        return "\n".join([
            f"## Gate: {head}", "",
            f"Metric `{self.metric}`; candidate `{self.candidate_model}`; data version "
            f"`{self.data_version or 'not versioned'}`.", "",
            "| rule | verdict | value | threshold | why |", "|---|---|---|---|---|", *rows])

    def render(self) -> str:
        head = f"gate: {'PASS' if self.passed else 'REJECT'} ({self.metric}) for {self.candidate}"
        return "\n".join([head, *(f"  [{'ok' if r.passed else 'FAIL'}] {r.rule}: {r.message}" for r in self.reasons)])


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _version(metrics: dict[str, Any]) -> str | None:
    """The data version a metrics.json names (None for runs on unversioned data, or older files)."""
    return (metrics.get("data_version") or {}).get("version")


def _predictions_path(metrics_path: Path, metrics: dict[str, Any], given: str | os.PathLike | None) -> Path | None:
    """The predictions behind a metrics.json: given, else the one it names, next to it."""
    if given is not None:
        return Path(given)
    path = metrics_path.parent / str(metrics.get("predictions") or "predictions.jsonl")
    return path if path.is_file() else None


def per_puzzle(predictions: str | os.PathLike, metric: str) -> Any:
    """A predictions.jsonl rescored (cello.scoring.ScoredSet); its fields PER_PUZZLE[metric]
    hold the per-puzzle values (and denominators) behind `metric`."""
    from cello.evaluate import read_predictions
    from cello.scoring import score_records

    return score_records(read_predictions(predictions), with_repair=metric.startswith("repaired"))


def _figure(values: Any, totals: Any) -> float:
    """The metric from per-puzzle values: their mean, or sum / sum(totals)."""
    return float(values.mean()) if totals is None else float(values.sum() / totals.sum())


def _coverage(cand: dict, count: int, cfg: GateConfig, others: dict[str, dict | None]) -> Reason:
    mismatch = [who for who, m in others.items()
                if m is not None and m.get("puzzles") and cand.get("puzzles") and m["puzzles"] != cand["puzzles"]]
    ok = count >= cfg.min_puzzles and not mismatch
    if mismatch:
        msg = (f"scored on other puzzles than the {' and the '.join(mismatch)} (id fingerprints differ); "
               "evaluate all on the same split")
    else:
        msg = f"{count} puzzles scored (minimum {cfg.min_puzzles})"
    return Reason("coverage", ok, float(count), float(cfg.min_puzzles), msg, {"fingerprint_mismatch": mismatch})


def _no_regression(cand_path: Path, cand: dict, inc_path: Path | None, inc: dict | None, cfg: GateConfig,
                   cand_pred: Any, inc_pred: Any) -> Reason:
    from cello.scoring import align, paired_bootstrap_diff

    tol, metric = cfg.regression_tolerance, cfg.metric
    if inc is None or inc_path is None:
        return Reason("no_regression", True, None, -tol, "no incumbent: first deployment", {"method": "none"})
    a_path, b_path = _predictions_path(cand_path, cand, cand_pred), _predictions_path(inc_path, inc, inc_pred)
    point = _num(cand["overall"].get(metric)), _num(inc["overall"].get(metric))
    if a_path is None or b_path is None:
        missing = " and ".join(w for w, p in (("candidate", a_path), ("incumbent", b_path)) if p is None)
        if cfg.require_paired or None in point:
            msg = (f"no predictions.jsonl for the {missing}: the paired comparison needs both "
                   "(pass --candidate-predictions/--incumbent-predictions, or set gate.require_paired: false)")
            return Reason("no_regression", False, None, -tol, msg, {"method": "paired_bootstrap", "missing": missing})
        diff = point[0] - point[1]
        return Reason("no_regression", diff >= -tol, diff, -tol,
                      f"point estimates (no predictions for the {missing}): candidate - incumbent = "
                      f"{diff:+.3f} vs -{tol:g}",
                      {"method": "point_estimate", "candidate": point[0], "incumbent": point[1]})
    sa, sb = per_puzzle(a_path, metric), per_puzzle(b_path, metric)
    field, denominator = PER_PUZZLE[metric]
    ia, ib = align(sa, sb)
    if len(ia) == 0:
        return Reason("no_regression", False, None, -tol,
                      "candidate and incumbent share no puzzle id; evaluate both on the same split",
                      {"method": "paired_bootstrap", "paired": 0})
    va, vb = getattr(sa, field)[ia].astype(float), getattr(sb, field)[ib].astype(float)
    ta, tb = (None, None) if denominator is None else (
        getattr(sa, denominator)[ia].astype(float), getattr(sb, denominator)[ib].astype(float))
    d = paired_bootstrap_diff(va, vb, totals=ta, totals_b=tb, n_boot=cfg.n_boot, seed=cfg.seed, ci=cfg.ci)
    detail = {"method": "paired_bootstrap", "test": cfg.regression_test, "paired": d.n, "candidate_puzzles": len(sa),
              "incumbent_puzzles": len(sb), "diff": d.to_dict(), "ci": cfg.ci,
              "statistic": "mean" if denominator is None else "ratio of sums",
              "candidate": _figure(va, ta), "incumbent": _figure(vb, tb)}
    pct = f"{cfg.ci:.0%}"
    if cfg.regression_test == "significant":
        ok = d.hi >= -tol
        msg = (f"candidate - incumbent = {d.mean:+.3f}, {pct} CI [{d.lo:+.3f}, {d.hi:+.3f}] over {d.n} paired puzzles; "
               + ("no drop beyond the tolerance is shown" if ok
                  else f"a drop beyond {tol:g} is shown (upper bound < -{tol:g})"))
        return Reason("no_regression", ok, d.hi, -tol, msg, detail)
    ok = d.lo >= -tol
    msg = (f"candidate - incumbent = {d.mean:+.3f}, {pct} CI [{d.lo:+.3f}, {d.hi:+.3f}] over {d.n} paired puzzles; "
           + ("non-inferior within the tolerance" if ok else f"non-inferiority not shown (lower bound < -{tol:g})"))
    return Reason("no_regression", ok, d.lo, -tol, msg, detail)


def incumbent_metrics(incumbent: str | os.PathLike, *, candidate: str | os.PathLike, out: str | os.PathLike,
                      **evaluate_kwargs: Any) -> Path:
    """The incumbent's metrics.json: `incumbent` itself when it is one (a .json file); else
    `incumbent` is a model (a Hub model such as the published hf://ncbi/Cell-o1, a checkpoint,
    a served URL), evaluated into `out` on the candidate's split and puzzles (its `limit`), with
    the split's prompts (eval records carry them: the published ones for a Hub import).
    `evaluate_kwargs` go to `cello.evaluate.evaluate` (backend, sampling, cfg, template, ...)."""
    from cello.config import EvalConfig, override
    from cello.evaluate import METRICS, evaluate

    if str(incumbent).endswith(".json"):
        return Path(incumbent)
    cand = load_metrics(candidate)
    split = cand.get("split")
    if not split or not Path(split).exists():
        msg = (f"{candidate} names the split {split!r}, which is not here, so the incumbent {incumbent} cannot be "
               f"evaluated on it; run `cello eval SPLIT --model {incumbent} -o DIR` on the candidate's split and "
               "pass --incumbent DIR/metrics.json.")
        raise InputError(msg)
    cfg = override(evaluate_kwargs.pop("cfg", None) or EvalConfig(), limit=cand.get("limit"))
    log.info("gate: evaluating the incumbent %s on %s -> %s", incumbent, split, out)
    evaluate(split, out, model=str(incumbent), cfg=cfg, **evaluate_kwargs)
    return Path(out) / METRICS


def gate(
    candidate: str | os.PathLike, *, incumbent: str | os.PathLike | None = None,
    baseline: str | os.PathLike | None = None,
    candidate_predictions: str | os.PathLike | None = None, incumbent_predictions: str | os.PathLike | None = None,
    cfg: GateConfig | None = None, out: str | os.PathLike | None = None,
) -> Decision:
    """Decide from metrics.json files (and the predictions.jsonl next to them, for the paired
    bootstrap); write the decision JSON to `out` when given. See the module doc for the rules."""
    cfg = cfg or GateConfig()
    metric = cfg.metric
    cand_path = Path(candidate)
    cand = load_metrics(cand_path)
    inc = load_metrics(incumbent) if incumbent is not None else None
    base = load_metrics(baseline) if baseline is not None else None
    value = _num(cand["overall"].get(metric))
    count = int(cand["overall"].get("count") or 0)
    reasons = [_coverage(cand, count, cfg, {"incumbent": inc, "baseline": base})]
    reasons.append(Reason(
        "min_accuracy", value is not None and value >= cfg.min_accuracy, value, cfg.min_accuracy,
        f"candidate {metric} {value if value is None else round(value, 4)} vs minimum {cfg.min_accuracy:g}",
    ))
    reasons.append(_no_regression(cand_path, cand, Path(incumbent) if incumbent else None, inc, cfg,
                                  candidate_predictions, incumbent_predictions))
    if base is None:
        reasons.append(Reason("beats_baseline", False, value, None,
                              "no baseline metrics given; evaluate the marker baseline (`cello eval --baseline`) "
                              "and pass --baseline"))
    else:
        floor = _num(base["overall"].get(metric))
        ok = value is not None and floor is not None and value > floor + cfg.baseline_margin
        threshold = None if floor is None else floor + cfg.baseline_margin
        reasons.append(Reason(
            "beats_baseline", ok, value, threshold,
            f"candidate {metric} {value if value is None else round(value, 4)} vs baseline "
            f"{floor if floor is None else round(floor, 4)} + margin {cfg.baseline_margin:g}",
            {"baseline_model": model_label(base, baseline), "baseline": floor},
        ))
    decision = Decision(
        passed=all(r.passed for r in reasons), metric=metric, reasons=reasons,
        candidate=str(candidate), candidate_model=model_label(cand, cand_path),
        incumbent=None if incumbent is None else str(incumbent),
        baseline=None if baseline is None else str(baseline), config=cfg.model_dump(),
        data_version=_version(cand),
        data_versions={who: _version(m) for who, m in (("candidate", cand), ("incumbent", inc), ("baseline", base))
                       if m is not None},
    )
    if out is not None:
        write_json(decision.to_dict(), out)
    if cand.get("model_dir"):
        from cello.card import update_section

        update_section(cand["model_dir"], "gate", decision.markdown())
    log.info("gate: %s (%s)", "pass" if decision.passed else "reject",
             ", ".join(f"{r.rule}={'ok' if r.passed else 'fail'}" for r in reasons))
    return decision
