"""Distill: the rejection rule, a real loopback OpenAI server, resume, and --template traces."""

from __future__ import annotations

import json

import pytest

from cello.config import DistillStageConfig
from cello.scoring import score
from cello.train.distill import distill, select_traces
from tests.conftest import defaults_params
from tests.llm_server import serve_openai
from tests.train.conftest import TEMPLATE

GOLD = ["B cell", "T cell", "NK cell"]
PERFECT = "<think>B markers, then T, then NK.</think>\n<answer>B cell | T cell | NK cell</answer>"
PERFECT_2 = "<think>Other words.</think>\n<answer>b cell | T cell | NK cell</answer>"  # case-insensitive: also 1.0
ONE_RIGHT = "<think>.</think>\n<answer>B cell | NK cell | T cell</answer>"  # valid, 1/3 right: reward 1/6
INVALID = "<answer>B cell | T cell | NK cell</answer>"  # no think block: -1


@pytest.mark.parametrize(
    ("texts", "kw", "kept"),
    [
        ([INVALID, ONE_RIGHT, PERFECT, PERFECT_2], {}, [2]),  # best valid reward 1.0: the first perfect one
        ([INVALID, ONE_RIGHT, PERFECT, PERFECT_2], {"keep_per_puzzle": 3}, [2, 3]),  # only top-reward texts
        ([PERFECT, PERFECT], {"keep_per_puzzle": 2}, [0]),  # duplicates are kept once
        ([INVALID, ONE_RIGHT], {}, []),  # no perfect answer: nothing by default
        ([INVALID, ONE_RIGHT], {"min_reward": 0.1}, [1]),  # a looser rule keeps the best valid one
        ([INVALID, INVALID], {"min_reward": 0.0}, []),  # a valid format is always required
    ],
)
def test_select_traces(texts, kw, kept):
    assert select_traces(texts, GOLD, **kw) == kept


def _cfg(url: str, **kw) -> DistillStageConfig:
    return DistillStageConfig(**{"teacher": url, "samples": 4, "max_tokens": 24, "temperature": 1.0,
                                 "concurrency": 4, "retries": 2, "timeout": 30.0, "chunk": 4, **kw})


def test_distill_against_a_served_tiny_model(tmp_path, tiny_model_dir, records):
    """Real HTTP to a tiny model: its random-weight answers are never valid, so nothing is kept."""
    with serve_openai(model_dir=tiny_model_dir) as url:
        s = distill(records["grpo"], tmp_path / "out", cfg=_cfg(url, samples=2), limit=3)
        assert len(url.chat_requests) == 3 and url.chat_requests[0].body["n"] == 2
    assert (s.puzzles, s.samples, s.records) == (3, 6, 0) and s.valid_samples == 0
    assert s.prompt_tokens > 0 and s.completion_tokens > 0
    assert (tmp_path / "out" / "train.jsonl").read_text() == ""
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["acceptance"] == 0.0


def _scripted(puzzles):
    """Per puzzle: a perfect answer, a valid but partly wrong one, an invalid one, a duplicate."""
    by_user = {p["prompt"][1]["content"]: p["answer"] for p in puzzles}

    def respond(messages, body):
        gold = by_user[messages[-1]["content"]]
        swapped = [gold[1], gold[0], *gold[2:]]
        good = TEMPLATE.render_answer(gold, reasoning="markers")
        return [TEMPLATE.render_answer(swapped), "no tags at all", good, good]

    return respond


def test_distill_keeps_only_top_reward_and_resumes(tmp_path, records, puzzles):
    out = tmp_path / "out"
    with serve_openai(responder=_scripted(puzzles), fail_first=[503]) as url:  # one retried failure
        first = distill(records["grpo"], out, cfg=_cfg(url), limit=5)
        assert first.records == 5 and first.puzzles_kept == 5 and first.samples == 20 and first.valid_samples == 15
        (out / ".work" / "records.jsonl").open("a").write('{"id": "p5", "torn')  # a crash mid-append
        second = distill(records["grpo"], out, cfg=_cfg(url))
        asked = [r.body["messages"][-1]["content"] for r in url.chat_requests]
    assert second.skipped_done == 5 and second.puzzles == len(puzzles) and second.records == len(puzzles)
    assert len(asked) == 1 + len(puzzles)  # the 503, then each puzzle exactly once across both runs
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in puzzles]  # input order, no duplicates
    for row, p in zip(rows, puzzles, strict=True):
        assert row["messages"][:2] == p["prompt"] and row["messages"][2]["role"] == "assistant"
        assert score(row["messages"][2]["content"], p["answer"]).reward == 1.0 and row["reward"] == 1.0
        assert "markers" in row["messages"][2]["content"]


def test_template_traces_need_no_teacher(tmp_path, records, puzzles):
    from cello.cli import main

    assert main(["train", "distill", str(records["grpo"]), "-o", str(tmp_path / "t"), "--template",
                 "--params", defaults_params(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "t" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == len(puzzles)
    assert all(
        score(r["messages"][-1]["content"], p["answer"]).reward == 1.0 for r, p in zip(rows, puzzles, strict=True)
    )


def test_cli_distill_from_a_teacher_url(tmp_path, records, puzzles, capsys):
    from cello.cli import main

    with serve_openai(responder=_scripted(puzzles), model_name="teacher-7b") as url:
        assert (
            main(
                [
                    "train",
                    "distill",
                    str(records["grpo"]),
                    "-o",
                    str(tmp_path / "d"),
                    "--teacher",
                    url,
                    "--teacher-model",
                    "teacher-7b",
                    "-k",
                    "4",
                    "--limit",
                    "3",
                    "--params",
                    defaults_params(tmp_path),
                ]
            )
            == 0
        )
        assert {r.body["model"] for r in url.chat_requests} == {"teacher-7b"}
    assert "3 SFT records from 3/3 puzzles" in capsys.readouterr().out
