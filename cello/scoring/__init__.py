"""Scoring of CellPuzzles completions: the paper's definitions, in one place.

GRPO rewards, `cello eval`, the promotion gate and the server all score through this package,
so a number computed anywhere in Cello means the same thing everywhere, and the same thing as
in the paper (Cell-o1, arXiv 2506.02911): the definitions follow the paper's released reward
function and eval script, quirks included. Import everything from here; the modules hold one
job each and say the definitions in full:

- `_reward`: answer extraction, the format rule, `score` and the GRPO reward (`reward`,
  `valid_reward`, TRL's reward-function protocol);
- `_repair`: `repair`, a valid assignment from any completion by optimal matching (beyond the paper);
- `_metrics`: the prediction record, `score_records`, `compute_metrics` and the bootstrap
  intervals (`bootstrap_ci`, `paired_bootstrap_diff`, `align`) the gate decides on;
- `_chance`: the expected figures of a random valid assignment, defined as the metrics are.

    from cello.scoring import score, reward, compute_metrics
    score("<think>..</think>\\n<answer>B cell | T cell</answer>", ["B cell", "T cell"]).reward  # 1.0
"""

from cello.scoring._chance import ChanceAccuracy, chance_expected_accuracy, chance_set_accuracy
from cello.scoring._metrics import (
    PairedDiff,
    ScoredSet,
    align,
    bootstrap_ci,
    compute_metrics,
    paired_bootstrap_diff,
    prediction_record,
    score_records,
)
from cello.scoring._repair import Repair, repair
from cello.scoring._reward import (
    REASONS,
    FormatCheck,
    Score,
    check_format,
    completion_text,
    gold_labels,
    parse_answer,
    reward,
    score,
    valid_reward,
)

__all__ = [
    "FormatCheck", "Score", "Repair", "ScoredSet", "PairedDiff", "REASONS",
    "parse_answer", "gold_labels", "check_format", "score", "reward", "valid_reward", "completion_text",
    "repair", "prediction_record", "score_records", "compute_metrics", "bootstrap_ci",
    "paired_bootstrap_diff", "align", "ChanceAccuracy", "chance_expected_accuracy", "chance_set_accuracy",
]
