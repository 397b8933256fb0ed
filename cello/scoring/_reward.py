"""The paper's format rule and reward: answer extraction, validity, the per-completion score.

The definitions follow the paper's released reward function (`compute_score`) and eval script
(Cell-o1, arXiv 2506.02911), quirks included; GRPO, `cello eval`, the gate and the server all
score through here, so a number means the same thing everywhere.

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

`reward` and `valid_reward` follow TRL's reward-function protocol.

    from cello.scoring import score, reward
    score("<think>..</think>\\n<answer>B cell | T cell</answer>", ["B cell", "T cell"]).reward  # 1.0
    reward(["<think>..</think>\\n<answer>B | A</answer>"], [["A", "B"]])  # [0.0]: valid, no cell right
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FormatCheck", "Score", "REASONS",
    "parse_answer", "gold_labels", "check_format", "score", "reward", "valid_reward", "completion_text",
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
    when every tag occurs once (tests/scoring/test_reward.py checks this), at string-search speed.
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


def valid_reward(completions: Sequence[Any], answer: Sequence[Sequence[str]], **_: Any) -> list[float]:
    """1.0 for a completion that passes the whole validity rule (reward != -1), else 0.0.

    A diagnostic (or auxiliary reward) only: the paper's reward already gives -1 to an
    invalid completion. Same calling protocol as `reward`.
    """
    return [float(check_format(completion_text(c), len(gold_labels(a))).valid)
            for c, a in zip(completions, answer, strict=True)]

