"""Reasoning traces for SFT from a teacher model, kept by rejection sampling on the reward.

For each train puzzle (GRPO or eval records), `samples` completions are drawn from a teacher
behind any OpenAI-compatible endpoint (a vLLM server, a KServe route, a hosted API; through
`cello.llm`, which handles concurrency and retries). Each is scored with `cello.scoring`.

The rejection rule (`select_traces`), as the paper's reasoning split was made:
  1. only completions with a valid format are candidates (think then answer, N distinct labels);
  2. the best reward among them must reach `min_reward` (default 1.0: every cell right);
  3. the completions with that best reward are kept, distinct texts in sample order, at most
     `keep_per_puzzle` of them.
A puzzle with no kept completion contributes nothing.

Resumable and append-safe: finished puzzles are appended, a chunk at a time, to
OUT/.work/records.jsonl and OUT/.work/ledger.jsonl (one line per puzzle tried); a rerun skips
every id in the ledger, and a torn last line from a crash is ignored. At the end,
OUT/train.jsonl (SFT chat records, input order) and OUT/summary.json (counts, acceptance
rate, token totals) are written atomically: `cello train sft OUT` reads them.

    cello train distill data/records/grpo -o data/records/distill --teacher http://vllm:8000/v1 -k 8
    cello train distill data/records/grpo -o data/records/template --template   # no teacher
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cello._io import append_journal, read_journal, write_json, write_jsonl
from cello.config import DistillStageConfig
from cello.data.prompt import PromptTemplate
from cello.scoring import score
from cello.train.data import read_records

log = logging.getLogger(__name__)

WORK = ".work"


def select_traces(texts: Sequence[str], answer: Sequence[str], *, min_reward: float = 1.0,
                  keep_per_puzzle: int = 1) -> list[int]:
    """Indices of the completions the rejection rule keeps (see the module docstring)."""
    scored = [(i, score(t, answer)) for i, t in enumerate(texts)]
    valid = [(i, s.reward) for i, s in scored if s.valid]
    if not valid:
        return []
    best = max(r for _, r in valid)
    if best < min_reward:
        return []
    kept: list[int] = []
    seen: set[str] = set()
    for i, r in valid:
        if r == best and texts[i].strip() not in seen:
            seen.add(texts[i].strip())
            kept.append(i)
            if len(kept) == keep_per_puzzle:
                break
    return kept


@dataclass
class DistillSummary:
    out: str
    mode: str
    puzzles: int = 0
    skipped_done: int = 0
    samples: int = 0
    valid_samples: int = 0
    puzzles_kept: int = 0
    records: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rule: dict[str, Any] = field(default_factory=dict)

    @property
    def acceptance(self) -> float:
        return self.puzzles_kept / self.puzzles if self.puzzles else 0.0

    def render(self) -> str:
        return (
            f"distill ({self.mode}): {self.records} SFT records from {self.puzzles_kept}/{self.puzzles} puzzles "
            f"({self.acceptance:.0%} kept; {self.valid_samples}/{self.samples} samples valid; "
            f"{self.skipped_done} done before) tokens: {self.prompt_tokens} prompt, "
            f"{self.completion_tokens} completion -> {self.out}"
        )


def _sft_record(rec: dict, text: str, **extra: Any) -> dict:
    return {
        "id": rec["id"],
        "dataset": rec["dataset"],
        "n": rec["n"],
        "messages": [*rec["prompt"], {"role": "assistant", "content": text}],
        **extra,
    }


def distill(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cfg: DistillStageConfig,
    template: PromptTemplate | None = None,
    use_template: bool = False,
    limit: int | None = None,
) -> DistillSummary:
    """Write SFT records with teacher traces (or, `use_template`, format-only traces from the gold answers)."""
    out = Path(out_dir)
    records = read_records(source, kind="prompt")[:limit]
    summary = DistillSummary(
        out=str(out),
        mode="template" if use_template else "teacher",
        rule={
            "valid_format": True,
            "min_reward": cfg.min_reward,
            "keep_per_puzzle": cfg.keep_per_puzzle,
            "samples": cfg.samples,
        },
    )
    if use_template:
        template = template or PromptTemplate()
        rows = [_sft_record(r, template.render_answer(r["answer"]), source="template") for r in records]
        summary.puzzles = summary.puzzles_kept = summary.records = len(rows)
        write_jsonl(rows, out / "train.jsonl")
        write_json(asdict(summary) | {"acceptance": 1.0}, out / "summary.json")
        return summary

    from cello.config import BackendConfig, SamplingParams
    from cello.llm import make_backend

    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    rec_path, ledger_path = work / "records.jsonl", work / "ledger.jsonl"
    read_journal(rec_path, repair=True)  # cut a torn last line, so that appends start on a fresh one
    ledger = {row["id"]: row for row in read_journal(ledger_path, repair=True)}
    todo = [r for r in records if r["id"] not in ledger]
    summary.skipped_done = len(records) - len(todo)
    params = SamplingParams(max_new_tokens=cfg.max_tokens, temperature=cfg.temperature, n=cfg.samples, seed=cfg.seed)
    backend_cfg = BackendConfig(
        spec=cfg.teacher,
        model=cfg.teacher_model,
        api_key_env=cfg.api_key_env,
        concurrency=cfg.concurrency,
        timeout_s=cfg.timeout,
        max_retries=cfg.retries,
    )
    if todo:
        log.info(
            "distill: %d puzzles to do (%d done before), %d samples each, teacher %s",
            len(todo),
            summary.skipped_done,
            cfg.samples,
            cfg.teacher,
        )
        with make_backend(backend_cfg) as backend:
            for start in range(0, len(todo), cfg.chunk):
                chunk = todo[start : start + cfg.chunk]
                gens = backend.generate_full([r["prompt"] for r in chunk], params)
                kept_rows, ledger_rows = [], []
                for rec, gen in zip(chunk, gens, strict=True):
                    rewards = [score(t, rec["answer"]).reward for t in gen.texts]
                    keep = select_traces(
                        gen.texts, rec["answer"], min_reward=cfg.min_reward, keep_per_puzzle=cfg.keep_per_puzzle
                    )
                    kept_rows += [_sft_record(rec, gen.texts[i], reward=rewards[i], source="teacher") for i in keep]
                    ledger_rows.append(
                        {
                            "id": rec["id"],
                            "rewards": rewards,
                            "kept": keep,
                            "prompt_tokens": gen.prompt_tokens,
                            "completion_tokens": gen.completion_tokens,
                        }
                    )
                append_journal(rec_path, kept_rows)  # records first: a crash between the two redoes the chunk
                append_journal(ledger_path, ledger_rows)
                ledger.update({row["id"]: row for row in ledger_rows})
                log.info("distill: %d/%d puzzles", start + len(chunk), len(todo))

    wanted = {r["id"] for r in records}
    rows_by_id: dict[str, list[dict]] = {}
    for row in read_journal(rec_path):
        if row["id"] in ledger and row["id"] in wanted:
            bucket = rows_by_id.setdefault(row["id"], [])
            if row not in bucket:
                bucket.append(row)
    rows = [row for r in records for row in rows_by_id.get(r["id"], [])]
    for r in records:
        entry = ledger.get(r["id"])
        if entry is None:
            continue
        summary.puzzles += 1
        summary.samples += len(entry["rewards"])
        summary.valid_samples += sum(x >= 0 for x in entry["rewards"])
        summary.puzzles_kept += bool(rows_by_id.get(r["id"]))
        summary.prompt_tokens += entry.get("prompt_tokens") or 0
        summary.completion_tokens += entry.get("completion_tokens") or 0
    summary.records = len(rows)
    write_jsonl(rows, out / "train.jsonl")
    write_json(asdict(summary) | {"acceptance": summary.acceptance}, out / "summary.json")
    return summary
