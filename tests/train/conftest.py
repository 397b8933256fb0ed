"""Fixtures for the training tests: small CellPuzzles records made from known marker genes.

Records are built with the project's own PromptTemplate (a short system prompt and a one-
character think block keep sequences short), so they have exactly the shapes that
`cello data export` writes: sft {"id","dataset","n","messages"}, grpo {"id","dataset","n",
"prompt","answer","candidates"}.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cello.data.prompt import PromptTemplate

TEMPLATE = PromptTemplate(
    system="Assign each cell a different candidate type. Reply <think>.</think><answer>A | B</answer>.",
    think_placeholder=".",
)


def make_puzzles(k: int = 24, *, n: int = 3, seed: int = 0) -> list[dict]:
    """k puzzles of n cells; each cell lists 4 marker genes of its type and 2 housekeeping genes."""
    from cello.llm.tiny import _HOUSEKEEPING, _MARKERS

    rng = random.Random(seed)
    types = sorted(_MARKERS)
    out = []
    for i in range(k):
        answer = rng.sample(types, n)
        genes = [rng.sample(_MARKERS[t], 4) + rng.sample(_HOUSEKEEPING, 2) for t in answer]
        out.append({"id": f"p{i}", "dataset": "synthetic", "n": n, "answer": answer,
                    "candidates": sorted(answer), "prompt": TEMPLATE.messages("", genes, sorted(answer))})
    return out


def write_records(root: Path, puzzles: list[dict]) -> dict[str, Path]:
    """sft/ and grpo/ export directories (train.jsonl) for `puzzles`."""
    sft = [{"id": p["id"], "dataset": p["dataset"], "n": p["n"],
            "messages": [*p["prompt"], {"role": "assistant", "content": TEMPLATE.render_answer(p["answer"])}]}
           for p in puzzles]
    paths = {}
    for name, rows in (("sft", sft), ("grpo", puzzles)):
        (root / name).mkdir(parents=True, exist_ok=True)
        with open(root / name / "train.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="session")
def puzzles() -> list[dict]:
    return make_puzzles()


@pytest.fixture(scope="session")
def records(tmp_path_factory, puzzles) -> dict[str, Path]:
    return write_records(tmp_path_factory.mktemp("records"), puzzles)


def sft_cfg(model: Path, **kw):
    """A small, fast SFT config for the tiny model (CPU, fp32, no trackers)."""
    from cello.config import SFTStageConfig

    base = dict(
        model=str(model),
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "use_dora": False, "modules_to_save": ["embed_tokens"]},
        learning_rate=5e-3,
        epochs=1,
        max_length=512,
        effective_batch_size=4,
        per_device_batch_size=4,
        gradient_checkpointing=False,
        report_to=["none"],
        logging_steps=1,
        save_steps=1000,
        eval_fraction=0.0,
    )
    base.update(kw)
    return SFTStageConfig(**base)


def grpo_cfg(model: Path, **kw):
    from cello.config import GRPOStageConfig

    base = dict(
        model=str(model),
        learning_rate=1e-3,
        max_steps=2,
        per_device_batch_size=4,
        num_generations=2,
        prompts_per_step=2,
        max_completion_length=12,
        beta=0.01,
        gradient_checkpointing=False,
        report_to=["none"],
        logging_steps=1,
        save_steps=1000,
        format_weight=0.5,
    )
    base.update(kw)
    return GRPOStageConfig(**base)
