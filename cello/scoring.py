"""Scoring of CellPuzzles completions: the paper's definitions, in one place.

GRPO rewards, `cello eval`, the promotion gate and the server all score through this module,
so a number computed anywhere in Cello means the same thing everywhere, and the same thing
as in the paper (Cell-o1, arXiv 2506.02911): the definitions follow the paper's released
reward function (`compute_score`) and eval script, quirks included.

Answer extraction (`parse_answer`, line-based): the completion is split into lines
(`str.splitlines`, so '\\r' and the other Unicode line breaks split too); the first line holding
"<answer>" gives the candidate: the text after "<answer>" on that line, stripped, with a
trailing "</answer>" removed. A multi-line answer therefore keeps only its FIRST line. When
that candidate is empty (no "<answer>" anywhere, or nothing after it on its line), the first
line holding "|" anywhere in the completion (stripped) is the candidate; else it is "".
Labels = the candidate split on "|", each stripped, EMPTY LABELS DROPPED ("A | B |" is two
labels). Gold labels likewise (from the gold types joined with "|").

Legitimate format (the eval's format rate): exactly one each of "<think>", "</think>",
"<answer>", "</answer>" (case-sensitive tags); the completion is "<think>...</think>", EXACTLY
ONE "\\n", "<answer>...</answer>", nothing before "<think>" (not even a space) and nothing
after "</answer>" but at most one "\\n" (Python's `$`); and the candidate contains "|" (so
a one-cell answer is never legitimate).

Reward (`score().reward`, GRPO): -1 unless legitimate, with as many labels as gold labels
and no repeated label (case-SENSITIVE: "B cell | b cell" is not a repeat); otherwise
(cell share + batch match) / 2, where a label is right when `label.lower() == gold.lower()`
at its position (str.lower, not casefold). `check_format(text, n)` is this rule without the
gold (`valid` <=> reward != -1) with a reason code; `Score.valid` means the same.

Per completion, as the eval script (`Score.correct`, `cell_accuracy`, `exact`, `uniqueness`):
not legitimate -> 0 correct (its cells still count), uniqueness 0. Legitimate -> labels and
gold zipped POSITION BY POSITION, even when their counts differ (eval gives partial credit
where the reward gives -1): correct = matches (lower()), cell share = correct / gold
labels, exact = all gold labels right (extra labels past the gold are ignored), uniqueness =
distinct labels / labels (case-sensitive; 0 without labels).

Over a set (`compute_metrics`): cell_accuracy = all correct cells / all gold cells (MICRO:
puzzles weighted by N, invalid outputs keep their cells in the denominator); batch_accuracy =
mean exact; format_rate = share legitimate; label_uniqueness = mean uniqueness over ALL
completions; by N = the same within each N. Cello adds: valid_rate (share with reward != -1),
cell_accuracy_macro (mean per-puzzle cell share), mean_reward, lengths (the paper reports the
mean token length of the completion: mean_length_tokens), and the repaired figures.

Beyond the paper: `repair` turns any completion into a valid assignment by optimal matching
(its own lenient reading of the answer; case-insensitive), and every figure has a percentile
bootstrap 95% interval over puzzles (ratio of sums for cell accuracy);
`paired_bootstrap_diff` compares two models on the same puzzles (the gate).

    from cello.scoring import score, reward, compute_metrics
    score("<think>..</think>\\n<answer>B cell | T cell</answer>", ["B cell", "T cell"]).reward  # 1.0
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FormatCheck", "Score", "Repair", "ScoredSet", "PairedDiff", "REASONS",
    "parse_answer", "gold_labels", "check_format", "score", "reward", "format_reward", "completion_text",
    "repair", "prediction_record", "score_records", "compute_metrics", "bootstrap_ci",
    "paired_bootstrap_diff", "align",
]

# Why a completion gets reward -1 (FormatCheck.reason), in the order the rule checks; "ok": valid.
OK = "ok"
REASONS = {
    OK: "valid",
    "empty": "the completion is empty",
    "missing_think": "no <think> or no </think> tag",
    "multiple_think": "more than one <think> or </think> tag",
    "missing_answer": "no <answer> or no </answer> tag",
    "multiple_answer": "more than one <answer> or </answer> tag",
    "layout_start": "text before <think>: the completion must start with <think>",
    "layout_between": "</think> must be followed by exactly one newline, then <answer>",
    "layout_end": "the completion must end with </answer> (one trailing newline allowed)",
    "no_separator": "no '|' on the first line of the answer (labels are separated by ' | ')",
    "no_gold": "the gold answer has no labels",
    "wrong_count": "the number of labels differs from the number of cells",
    "duplicate_label": "a label is repeated (exact spelling)",
}
# Reasons after which the completion is still legitimate for the eval script (format rate).
_LEGITIMATE = frozenset({OK, "no_gold", "wrong_count", "duplicate_label"})


def _items(candidate: str) -> list[str]:
    """Labels of an answer string: split on '|', stripped, empty ones dropped (the paper's rule)."""
    return [s for s in map(str.strip, candidate.split("|")) if s]


def gold_labels(answer: Sequence[str]) -> list[str]:
    """The gold labels as the paper reads them: the types joined by '|', split, stripped, empties dropped."""
    return _items("|".join(answer))


def _candidate(text: str) -> str:
    """The paper's line-based answer extraction (see the module doc)."""
    start = text.find("<answer>")  # the first line holding <answer> holds its first occurrence
    cand = ""
    if start >= 0:
        rest = text[start + 8:].splitlines()
        cand = rest[0].strip() if rest else ""
        if cand.endswith("</answer>"):
            cand = cand.replace("</answer>", "").strip()
    if not cand and "|" in text:
        for line in text.splitlines():
            if "|" in line:
                return line.strip()
    return cand


def parse_answer(text: str) -> list[str] | None:
    """Labels of a completion as the paper extracts them (first answer line, empties dropped);
    None when there is no candidate (no <answer> text and no line with '|')."""
    cand = _candidate(text)
    return _items(cand) if cand else None


def _layout(text: str) -> str:
    """The paper's layout rule, given one tag of each kind: OK or a layout reason.

    Same verdict as re.match(r'^<think>.*?</think>\\n<answer>.*?</answer>$', text, re.DOTALL)
    when every tag occurs once (tests/test_scoring.py checks this), at string-search speed.
    """
    if not text.startswith("<think>"):
        return "layout_start"
    end_think = text.find("</think>")
    if not text.startswith("\n<answer>", end_think + 8):
        return "layout_between"
    end = text.find("</answer>")
    tail = len(text) - (end + 9)
    if end < end_think + 9 or not (tail == 0 or (tail == 1 and text[-1] == "\n")):  # </answer> after <answer>
        return "layout_end"
    return OK


@dataclass(frozen=True, slots=True)
class FormatCheck:
    """Result of the format rule: `valid` (reward != -1), a `reason` code (see REASONS), the
    parsed labels (None: nothing to parse) and `legitimate` (the eval script's format check:
    tags, layout and a '|' in the answer, without the label count and repeat checks)."""

    valid: bool
    reason: str
    labels: list[str] | None
    legitimate: bool = False

    @property
    def message(self) -> str:
        return REASONS[self.reason]


def check_format(text: str, n: int) -> FormatCheck:
    """The paper's validity rule for a completion of a puzzle with `n` gold labels."""
    cand = _candidate(text)
    labels = _items(cand) if cand else None
    if not text or text.isspace():
        return FormatCheck(False, "empty", labels)
    t_open, t_close = text.count("<think>"), text.count("</think>")
    a_open, a_close = text.count("<answer>"), text.count("</answer>")
    if t_open > 1 or t_close > 1:
        reason = "multiple_think"
    elif t_open == 0 or t_close == 0:
        reason = "missing_think"
    elif a_open > 1 or a_close > 1:
        reason = "multiple_answer"
    elif a_open == 0 or a_close == 0:
        reason = "missing_answer"
    else:
        reason = _layout(text)
        if reason == OK and "|" not in cand:
            reason = "no_separator"
    if reason != OK or labels is None:  # ('|' is in the candidate, so labels is a list, maybe empty)
        return FormatCheck(False, reason, labels)
    if n <= 0:
        return FormatCheck(False, "no_gold", labels, True)
    if len(labels) != n:
        return FormatCheck(False, "wrong_count", labels, True)
    if len(set(labels)) != n:
        return FormatCheck(False, "duplicate_label", labels, True)
    return FormatCheck(True, OK, labels, True)


@dataclass(frozen=True, slots=True)
class Score:
    """One completion scored against its gold answer.

    `valid`/`reason`: the reward rule (valid <=> reward != -1). `correct` has one entry per
    gold label, as the eval script counts (all False unless `legitimate`; positional, so a
    legitimate answer with a missing label still gets partial credit); `cell_accuracy` =
    their share, `exact` = all of them; `reward` is the GRPO reward; `uniqueness` = distinct
    labels / labels (0 unless legitimate). `unknown_labels` counts parsed labels outside the
    candidates, case-insensitively (None: no candidates given).
    """

    valid: bool
    reason: str
    labels: list[str] | None
    correct: list[bool]
    cell_accuracy: float
    exact: bool
    reward: float
    unknown_labels: int | None = None
    legitimate: bool = False
    uniqueness: float = 0.0


def score(text: str, answer: Sequence[str], *, candidates: Sequence[str] | None = None) -> Score:
    """Score a completion against the gold types (in cell order); see the module doc."""
    gold = gold_labels(answer)
    n = len(gold)
    check = check_format(text, n)
    labels = check.labels
    unknown = None
    if candidates is not None and labels is not None:
        known = {c.strip().lower() for c in candidates}
        unknown = sum(label.lower() not in known for label in labels)
    if not check.legitimate:
        return Score(False, check.reason, labels, [False] * n, 0.0, False, -1.0, unknown, False, 0.0)
    labels = labels or []
    correct = [p == g or p.lower() == g.lower() for p, g in zip(labels, gold, strict=False)]  # positional
    correct += [False] * (n - len(correct))
    hits = sum(correct)
    acc = hits / n if n else 0.0
    exact = n > 0 and hits == n
    uniq = len(set(labels)) / len(labels) if labels else 0.0
    rew = (acc + exact) / 2 if check.valid else -1.0
    return Score(check.valid, check.reason, labels, correct, acc, exact, rew, unknown, True, uniq)


def completion_text(completion: Any) -> str:
    """The text of a completion as TRL passes it: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return ""


def reward(completions: Sequence[Any], answer: Sequence[Sequence[str]], **_: Any) -> list[float]:
    """GRPO reward per completion: (cell accuracy + batch match) / 2 if valid, else -1.

    The signature is TRL's reward-function protocol: the gold answers arrive as the dataset
    column `answer`; other columns and trainer arguments are accepted and ignored, so
    `GRPOTrainer(reward_funcs=[cello.scoring.reward])` works as is.
    """
    if len(completions) != len(answer):
        msg = f"reward(): {len(completions)} completions but {len(answer)} answers; pass one answer per completion."
        raise ValueError(msg)
    return [score(completion_text(c), a).reward for c, a in zip(completions, answer, strict=True)]


def format_reward(completions: Sequence[Any], answer: Sequence[Sequence[str]], **_: Any) -> list[float]:
    """1.0 for a completion that passes the whole validity rule (reward != -1), else 0.0.

    A diagnostic (or auxiliary reward) only: the paper's reward already gives -1 to an
    invalid completion. Same calling protocol as `reward`.
    """
    return [float(check_format(completion_text(c), len(gold_labels(a))).valid)
            for c, a in zip(completions, answer, strict=True)]


# ---------------------------------------------------------------- repair
@dataclass(frozen=True, slots=True)
class Repair:
    """A valid assignment (one candidate per cell, each used once) and whether it differs
    from what the model wrote (`repaired=False`: a valid completion whose labels already are
    a permutation of the candidates)."""

    labels: list[str]
    repaired: bool


def _split_keep(inner: str) -> list[str]:
    """Labels of an answer body for repair: split on '|', trimmed, empty positions kept."""
    if not inner.strip():
        return []
    return [part.strip() for part in inner.split("|")]


def _written(text: str) -> list[str]:
    """What the model wrote per position, read leniently (for repair only): the last complete
    answer block (all its lines), else a cut-off block, else the last line with a '|'."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        return _split_keep(text[start + 8:end])
    start = text.rfind("<answer>")
    if start >= 0:  # an answer block cut off by the length limit
        return _split_keep(text[start + 8:])
    for line in reversed(text.strip().splitlines()):  # no tags at all: a bare 'A | B' line
        if "|" in line:
            return _split_keep(line)
    return []


def repair(text: str, candidates: Sequence[str]) -> Repair:
    """A valid assignment from any completion by optimal matching against the candidates.

    Position i of the written answer is matched to one candidate; the matching maximises
    first the number of exact (case-insensitive, trimmed) matches, then the total fuzzy
    similarity (difflib ratio) of the others. Positions with nothing written (or beyond the
    written labels) receive the leftover candidates; labels beyond N are ignored.
    """
    from scipy.optimize import linear_sum_assignment

    n = len(candidates)
    check = check_format(text, n)
    written = check.labels if check.valid and check.labels is not None else _written(text)
    cand_key = [c.strip().casefold() for c in candidates]
    index = {k: j for j, k in enumerate(cand_key)}
    keys = [w.casefold() for w in written[:n]] + [""] * max(0, n - len(written))
    exact = [index.get(k, -1) if k else -1 for k in keys]
    if check.valid and -1 not in exact and len(set(exact)) == n:
        return Repair([candidates[j] for j in exact], False)
    # Rows whose exact candidate no other row claims are in every optimal matching: fix them.
    claims: dict[int, int] = {}
    for j in exact:
        if j >= 0:
            claims[j] = claims.get(j, 0) + 1
    out: list[int] = [-1] * n
    for i, j in enumerate(exact):
        if j >= 0 and claims[j] == 1:
            out[i] = j
    rows = [i for i in range(n) if out[i] < 0]
    if rows:
        taken = set(out)
        cols = [j for j in range(n) if j not in taken]
        big = float(n + 1)  # one exact match outweighs any sum of fuzzy ratios (each < 1)
        weight = np.zeros((len(rows), len(cols)))
        for r, i in enumerate(rows):
            if not keys[i]:
                continue
            sm = difflib.SequenceMatcher(None, autojunk=False)
            sm.set_seq2(keys[i])
            for c, j in enumerate(cols):
                if exact[i] == j:
                    weight[r, c] = big
                else:
                    sm.set_seq1(cand_key[j])
                    weight[r, c] = sm.ratio()
        r_idx, c_idx = linear_sum_assignment(weight, maximize=True)
        for r, c in zip(r_idx, c_idx, strict=True):
            out[rows[r]] = cols[c]
    return Repair([candidates[j] for j in out], True)


# ---------------------------------------------------------------- records and metrics
def prediction_record(
    completion: str, answer: Sequence[str], *, id: str, dataset: str = "", n: int | None = None,
    candidates: Sequence[str] | None = None, **extra: Any,
) -> dict[str, Any]:
    """The JSON record every predictor writes (eval, baseline): id, dataset, n, completion,
    parsed labels, gold answer, candidates, then the scoring fields of `score` (valid =
    reward != -1, legitimate = the eval's format check, reason, reward, correct,
    cell_accuracy, exact). `extra` fields (e.g. completion_tokens) are appended."""
    s = score(completion, answer, candidates=candidates)
    rec = {
        "id": id, "dataset": dataset, "n": len(answer) if n is None else int(n),
        "completion": completion, "labels": s.labels, "answer": list(answer),
        "candidates": sorted(answer) if candidates is None else list(candidates),
        "valid": s.valid, "legitimate": s.legitimate, "reason": s.reason, "reward": s.reward,
        "correct": s.correct, "cell_accuracy": s.cell_accuracy, "exact": s.exact,
    }
    rec.update(extra)
    return rec


@dataclass(frozen=True)
class ScoredSet:
    """Per-puzzle arrays over a set of predictions (one entry per record, in input order).

    `n`: gold labels; `correct_cells`: correct ones as the eval counts (0 unless legitimate);
    `cell_accuracy` = correct_cells / n; `exact`, `uniqueness`: the eval's; `legitimate`: the
    eval's format check; `valid`: reward != -1; `reward`: the GRPO reward. The repaired_*
    arrays score the repaired assignment the same way.
    """

    ids: np.ndarray
    dataset: np.ndarray
    n: np.ndarray
    valid: np.ndarray
    legitimate: np.ndarray
    uniqueness: np.ndarray
    cell_accuracy: np.ndarray
    exact: np.ndarray
    reward: np.ndarray
    length_chars: np.ndarray
    length_tokens: np.ndarray  # NaN where the record has no completion_tokens
    repaired: np.ndarray
    repaired_cell_accuracy: np.ndarray
    repaired_exact: np.ndarray
    correct_cells: np.ndarray
    repaired_correct_cells: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


_TYPES = {"ids": object, "dataset": object, "n": np.int64, "valid": bool, "legitimate": bool, "exact": bool,
          "repaired": bool, "repaired_exact": bool, "correct_cells": np.int64, "repaired_correct_cells": np.int64}


def score_records(records: Iterable[Mapping[str, Any]], *, with_repair: bool = True) -> ScoredSet:
    """Score records that hold `completion` and `answer` (gold types in cell order).

    Optional fields: `id` (default: position), `dataset` (""), `candidates` (default: the
    gold types, which are the candidates of a CellPuzzle), `completion_tokens`. Stored scoring
    fields are ignored: everything is recomputed here, so old files follow the current rules.
    Without repair, the repaired_* arrays hold NaN / 0 / False.
    """
    cols: dict[str, list] = {k: [] for k in ScoredSet.__dataclass_fields__}
    for pos, rec in enumerate(records):
        text, answer = rec.get("completion") or "", [str(a) for a in rec["answer"]]
        s = score(text, answer)
        n = len(s.correct)
        hits = sum(s.correct)
        cols["ids"].append(str(rec.get("id", pos)))
        cols["dataset"].append(str(rec.get("dataset") or ""))
        for key, value in (("n", n), ("valid", s.valid), ("legitimate", s.legitimate), ("uniqueness", s.uniqueness),
                           ("cell_accuracy", s.cell_accuracy), ("correct_cells", hits), ("exact", s.exact),
                           ("reward", s.reward), ("length_chars", len(text))):
            cols[key].append(value)
        tok = rec.get("completion_tokens")
        cols["length_tokens"].append(math.nan if tok is None else float(tok))
        if with_repair:
            cands = rec.get("candidates")
            cands = sorted(answer) if cands is None or len(cands) == 0 else [str(c) for c in cands]
            r = repair(text, cands)
            gold = gold_labels(answer)
            fixed = sum(p.strip().lower() == g.lower() for p, g in zip(r.labels, gold, strict=False))
            cols["repaired"].append(r.repaired)
            cols["repaired_correct_cells"].append(fixed)
            cols["repaired_cell_accuracy"].append(fixed / n if n else 0.0)
            cols["repaired_exact"].append(n > 0 and fixed == n)
        else:
            cols["repaired"].append(False)
            cols["repaired_correct_cells"].append(0)
            cols["repaired_cell_accuracy"].append(math.nan)
            cols["repaired_exact"].append(False)
    return ScoredSet(**{k: np.asarray(v, dtype=_TYPES.get(k, np.float64)) for k, v in cols.items()})


# ---------------------------------------------------------------- bootstrap
Stat = tuple[np.ndarray, np.ndarray | None]  # (per-puzzle numerators, denominators or None for a mean)


def _point(stat: Stat) -> float:
    num, den = stat
    return float(num.sum() / den.sum()) if den is not None else float(num.mean())


def _boot_indices(k: int, n_boot: int, seed: int, *, budget: int = 2_000_000) -> Iterator[np.ndarray]:
    """Resampled puzzle indices, n_boot rows of k, in chunks of about `budget` entries."""
    rng = np.random.default_rng(seed)
    rows = max(1, budget // max(k, 1))
    for start in range(0, n_boot, rows):
        yield rng.integers(0, k, size=(min(rows, n_boot - start), k))


def _resample(stats: Sequence[Stat], *, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap replicates of several statistics over the same resampled puzzles. A statistic
    is a mean of per-puzzle values, or a ratio of sums (sum num / sum den) when den is given."""
    k = len(stats[0][0])
    out: list[list[np.ndarray]] = [[] for _ in stats]
    with np.errstate(invalid="ignore", divide="ignore"):
        for idx in _boot_indices(k, n_boot, seed):
            for acc, (num, den) in zip(out, stats, strict=True):
                total = num[idx].sum(axis=1)
                acc.append(total / den[idx].sum(axis=1) if den is not None else total / k)
    return [np.concatenate(a) for a in out]


def _interval(replicates: np.ndarray, ci: float) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def _stat(values: Any, totals: Any, what: str) -> Stat:
    num = np.asarray(values, dtype=np.float64)
    den = None if totals is None else np.asarray(totals, dtype=np.float64)
    if den is not None and den.shape != num.shape:
        msg = f"{what}: {num.shape[0]} values but {den.shape[0]} totals; pass one total per puzzle."
        raise ValueError(msg)
    return num, den


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, totals: Sequence[float] | np.ndarray | None = None,
                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval over puzzles of the mean of per-puzzle `values`, or, with
    `totals`, of the ratio of sums sum(values) / sum(totals) (cell accuracy: correct cells and
    cells per puzzle). (NaN, NaN) if empty."""
    stat = _stat(values, totals, "bootstrap_ci()")
    if stat[0].size == 0:
        return (math.nan, math.nan)
    return _interval(_resample([stat], n_boot=n_boot, seed=seed)[0], ci)


@dataclass(frozen=True, slots=True)
class PairedDiff:
    """Point estimate of a - b (`mean`: difference of means, or of ratios of sums) with its
    percentile-bootstrap interval over `n` paired puzzles."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def paired_bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                          totals: Sequence[float] | np.ndarray | None = None,
                          totals_b: Sequence[float] | np.ndarray | None = None,
                          n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> PairedDiff:
    """Paired bootstrap over puzzles of mean(a) - mean(b); with `totals`, of
    sum(a)/sum(totals) - sum(b)/sum(totals_b) (totals_b defaults to totals: the same puzzles
    have the same cells). `a[i]` and `b[i]` are the same puzzle scored for two models (use
    `align` to pair two ScoredSets by id); each resample draws puzzles, not cells."""
    sa, sb = _stat(a, totals, "paired_bootstrap_diff()"), _stat(b, totals if totals_b is None else totals_b,
                                                                 "paired_bootstrap_diff()")
    if sa[0].shape != sb[0].shape:
        msg = f"paired_bootstrap_diff(): {sa[0].shape[0]} vs {sb[0].shape[0]} values; pair them by puzzle id first (cello.scoring.align)."
        raise ValueError(msg)
    k = int(sa[0].size)
    if k == 0:
        return PairedDiff(math.nan, math.nan, math.nan, 0)
    if sa[1] is None:  # a mean: resample the differences
        diff = sa[0] - sb[0]
        lo, hi = _interval(_resample([(diff, None)], n_boot=n_boot, seed=seed)[0], ci)
        return PairedDiff(float(diff.mean()), lo, hi, k)
    ra, rb = _resample([sa, sb], n_boot=n_boot, seed=seed)
    lo, hi = _interval(ra - rb, ci)
    return PairedDiff(_point(sa) - _point(sb), lo, hi, k)


def align(a: ScoredSet, b: ScoredSet) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (ia, ib) such that a.ids[ia] == b.ids[ib]: the puzzles both sets scored."""
    pos_b = {pid: j for j, pid in enumerate(b.ids)}
    pairs = [(i, pos_b[pid]) for i, pid in enumerate(a.ids) if pid in pos_b]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ia, ib = zip(*pairs, strict=True)
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)


# ---------------------------------------------------------------- metrics
def _group(s: ScoredSet, mask: np.ndarray, *, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    k = int(mask.sum())
    if k == 0:
        return {"count": 0}
    cells = s.n[mask].astype(np.float64)
    with_ci: dict[str, Stat] = {
        "cell_accuracy": (s.correct_cells[mask].astype(np.float64), cells),
        "batch_accuracy": (s.exact[mask].astype(np.float64), None),
        "repaired_cell_accuracy": (s.repaired_correct_cells[mask].astype(np.float64), cells),
        "repaired_batch_accuracy": (s.repaired_exact[mask].astype(np.float64), None),
    }
    boot = dict(zip(with_ci, _resample(list(with_ci.values()), n_boot=n_boot, seed=seed), strict=True))
    fig = {name: _point(stat) for name, stat in with_ci.items()}
    tokens = s.length_tokens[mask]
    out: dict[str, Any] = {"count": k, "cells": int(cells.sum())}
    for name in ("cell_accuracy", "batch_accuracy"):
        out[name], out[f"{name}_ci"] = fig[name], list(_interval(boot[name], ci))
    out.update({
        "cell_accuracy_macro": float(s.cell_accuracy[mask].mean()),
        "format_rate": float(s.legitimate[mask].mean()),
        "valid_rate": float(s.valid[mask].mean()),
        "label_uniqueness": float(s.uniqueness[mask].mean()),
        "mean_reward": float(s.reward[mask].mean()),
        "mean_length_chars": float(s.length_chars[mask].mean()),
        "mean_length_tokens": None if np.isnan(tokens).all() else float(np.nanmean(tokens)),
    })
    for name in ("repaired_cell_accuracy", "repaired_batch_accuracy"):
        out[name], out[f"{name}_ci"] = fig[name], list(_interval(boot[name], ci))
    out["repaired_cell_accuracy_macro"] = float(s.repaired_cell_accuracy[mask].mean())
    out["repair_rate"] = float(s.repaired[mask].mean())
    return out


def compute_metrics(records: Iterable[Mapping[str, Any]] | ScoredSet, *, n_boot: int = 1000,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Metrics of a prediction set: {"overall": G, "by_n": {"8": G, ...}, "by_dataset": {...},
    "bootstrap": {...}}, where each G holds (definitions in the module doc):
    count, cells, cell_accuracy (micro: correct cells / cells) and batch_accuracy, each with a
    `_ci` percentile-bootstrap interval over puzzles (cell accuracy: ratio of sums per
    resample), cell_accuracy_macro (mean per-puzzle share), format_rate (legitimate format),
    valid_rate (reward != -1), label_uniqueness, mean_reward, mean_length_chars,
    mean_length_tokens (None unless records carry completion_tokens), and the repaired
    figures: repaired_cell_accuracy(_ci, _macro), repaired_batch_accuracy(_ci), repair_rate.
    """
    s = records if isinstance(records, ScoredSet) else score_records(records)
    kw = {"n_boot": n_boot, "seed": seed, "ci": ci}
    everything = np.ones(len(s), dtype=bool)
    return {
        "overall": _group(s, everything, **kw),
        "by_n": {str(v): _group(s, s.n == v, **kw) for v in sorted(set(s.n.tolist()))},
        "by_dataset": {d: _group(s, s.dataset == d, **kw) for d in sorted(set(s.dataset.tolist()))},
        "bootstrap": {"method": "percentile", "unit": "puzzle", "cell_accuracy": "ratio of sums", **kw},
    }
