"""cello.baselines and `cello baseline`: chance, the marker-gene solver, the CLI, the demo data.

    .venv/bin/pytest tests/test_baselines.py -q -s     # -s prints baseline vs chance on the demo split
"""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest

from cello.baselines import (
    ChanceBaseline,
    MarkerBaseline,
    chance_expected_accuracy,
    chance_set_accuracy,
    fit_baseline,
    normalize_type,
    predict_baseline,
)
from cello.baselines.names import markers, words
from cello.cli import main
from cello.config import BaselineConfig
from cello.data.prompt import PromptTemplate
from cello.errors import InputError
from cello.scoring import compute_metrics, prediction_record, score
from tests.conftest import defaults_params

TYPES = [f"type {chr(65 + i)}" for i in range(10)]
NOISE = [f"G{i}" for i in range(200)]


def synthetic_puzzles(k: int, *, seed: int, min_n: int = 4, max_n: int = 8, prefix: str = "p") -> pd.DataFrame:
    """Puzzles whose cells carry three marker genes of their type among noise genes."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(k):
        n = int(rng.integers(min_n, max_n + 1))
        answer = [TYPES[j] for j in rng.choice(len(TYPES), size=n, replace=False)]
        cells = []
        for t in answer:
            genes = list(rng.choice(NOISE, size=20, replace=False))
            for m in range(3):  # markers land somewhere in the top 8
                genes.insert(int(rng.integers(0, 8)), f"{t.split()[1]}_MARK{m}")
            cells.append(genes)
        rows.append({
            "puzzle_id": f"{prefix}{i}", "dataset": "synthetic", "group": "d0", "donor_id": "d0", "n": n,
            "cell_ids": [f"{prefix}{i}c{j}" for j in range(n)], "cell_genes": cells, "context": "",
            "candidates": sorted(answer), "answer": answer,
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted():
    return MarkerBaseline().fit(synthetic_puzzles(60, seed=0))


def _accuracy(predictor, puzzles: pd.DataFrame) -> dict:
    recs = [prediction_record(MarkerBaseline.completion(predictor(p)), list(p["answer"]), id=p["puzzle_id"])
            for p in puzzles.to_dict("records")]
    return compute_metrics(recs, n_boot=100)["overall"]


def test_chance_expected_accuracy():
    assert chance_expected_accuracy(1) == (1.0, 1.0)
    assert chance_expected_accuracy(4) == pytest.approx((0.25, 1 / 24))
    assert chance_expected_accuracy(15).batch == pytest.approx(1 / math.factorial(15))
    with pytest.raises(ValueError):
        chance_expected_accuracy(0)


def test_chance_over_a_set_is_defined_as_the_metrics_are():
    chance = chance_set_accuracy([2, 3])
    assert chance["cell_accuracy"] == pytest.approx(2 / 5)  # micro: one expected hit per puzzle, over all cells
    assert chance["cell_accuracy_macro"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert chance["batch_accuracy"] == pytest.approx((1 / 2 + 1 / 6) / 2)


def test_chance_baseline_is_valid_reproducible_and_near_one_over_n():
    puzzles = synthetic_puzzles(400, seed=1, min_n=5, max_n=5)
    chance = ChanceBaseline(seed=3)
    first = puzzles.iloc[0].to_dict()
    labels = chance.predict(first)
    assert sorted(labels) == sorted(first["candidates"])
    assert ChanceBaseline(seed=3).predict(first) == labels  # same seed and id: same answer
    acc = _accuracy(chance.predict, puzzles)
    assert acc["format_rate"] == 1.0
    assert acc["cell_accuracy"] == pytest.approx(1 / 5, abs=0.05)


def test_marker_baseline_solves_marker_puzzles(fitted):
    test = synthetic_puzzles(40, seed=2, prefix="t")
    marker = _accuracy(fitted.predict, test)
    chance = _accuracy(ChanceBaseline(0).predict, test)
    print(f"synthetic: marker cell {marker['cell_accuracy']:.3f} batch {marker['batch_accuracy']:.3f}; "
          f"chance cell {chance['cell_accuracy']:.3f}")
    assert marker["cell_accuracy"] >= 0.98 and marker["batch_accuracy"] >= 0.95
    assert chance["cell_accuracy"] < 0.35


def test_score_matrix_unseen_type_and_gene_are_neutral(fitted):
    cells = [["A_MARK0", "G1"], ["NEW_GENE"], ["B_MARK1", "G7"]]
    cands = ["type A", "never seen", "TYPE  b"]  # case and whitespace are normalised
    s = fitted.score_matrix(cells, cands)
    assert s.shape == (3, 3)
    assert np.all(s[:, 1] == -math.log(len(fitted.types)))  # unseen type, nothing in its name: uniform
    np.testing.assert_allclose(s[1], fitted.score_matrix([[]], cands)[0])  # unseen genes: no evidence
    assert s[0, 0] > s[0, 2] and s[2, 2] > s[2, 0]
    assert fitted.assign(cells, cands) == ["type A", "never seen", "TYPE  b"]
    assert normalize_type("  CD4+   T Cell ") == "cd4+ t cell"
    with pytest.raises(InputError, match="candidates"):
        fitted.assign(cells, cands[:2])


def test_rank_weighting_counts_top_genes_more():
    one = [{"cell_genes": [["X", "Y"], ["Z"]], "candidates": ["s", "t"], "answer": ["t", "s"]}]
    model = MarkerBaseline(BaselineConfig(rank_weighting="log")).fit(one)
    t = model.types.index("t")
    assert model.weights[t, model.vocab["X"]] > model.weights[t, model.vocab["Y"]] > 0
    top1 = MarkerBaseline(BaselineConfig(top_k=1)).fit(one)
    assert set(top1.vocab) == {"X", "Z"}


# ------------------------------------------------------------------ where ranks carry the signal
POOL = [f"S{i}" for i in range(30)]


def ranked_puzzles(k: int, *, seed: int, prefix: str, noise: float = 3.0) -> pd.DataFrame:
    """Every cell lists all 30 pool genes: only their order, a noisy sort of its type's fixed
    expression profile, tells the types apart."""
    rng = np.random.default_rng(seed)
    profiles = np.random.default_rng(99).normal(size=(8, len(POOL)))
    rows = []
    for i in range(k):
        n = int(rng.integers(4, 9))
        picked = rng.choice(8, size=n, replace=False)
        cells = [[POOL[j] for j in np.argsort(-(profiles[t] + noise * rng.normal(size=len(POOL))))] for t in picked]
        answer = [TYPES[t] for t in picked]
        rows.append({"puzzle_id": f"{prefix}{i}", "cell_ids": [f"{prefix}{i}c{j}" for j in range(n)],
                     "cell_genes": cells, "candidates": sorted(answer), "answer": answer, "n": n})
    return pd.DataFrame(rows)


def log_lift_reference(train: pd.DataFrame):
    """The previous solver, as a yardstick: smoothed log-lift of rank-weighted gene counts per type
    (multinomial naive Bayes), summed over a cell's genes with the same rank weights."""
    from scipy.optimize import linear_sum_assignment

    types = sorted({t for a in train["answer"] for t in a})
    index = {g: i for i, g in enumerate(POOL)}
    c = np.zeros((len(types), len(POOL)))
    for cells, answer in zip(train["cell_genes"], train["answer"], strict=True):
        for cell, t in zip(cells, answer, strict=True):
            c[types.index(t), [index[g] for g in cell]] += 1 / np.log2(np.arange(len(cell)) + 2)
    lift = np.log((c + 0.1) / (c.sum(1, keepdims=True) + 0.1 * len(POOL))) - np.log(
        (c.sum(0) + 0.1) / (c.sum() + 0.1 * len(POOL)))

    def assign(cells, candidates):
        s = np.array([[sum(lift[types.index(t), index[g]] / np.log2(r + 2) for r, g in enumerate(cell))
                       for t in candidates] for cell in cells])
        rows, cols = linear_sum_assignment(s, maximize=True)
        return [candidates[c] for _, c in sorted(zip(rows, cols, strict=True))]

    return assign


def test_beats_the_log_lift_solver_where_only_ranks_carry_signal_and_is_deterministic():
    train, test = ranked_puzzles(200, seed=0, prefix="p"), ranked_puzzles(150, seed=1, prefix="t")
    model = MarkerBaseline().fit(train)
    ours = _accuracy(lambda p: model.assign(p["cell_genes"], p["candidates"]), test)
    reference = log_lift_reference(train)
    before = _accuracy(lambda p: reference(p["cell_genes"], p["candidates"]), test)
    print(f"ranks only: cell {ours['cell_accuracy']:.3f} vs log-lift {before['cell_accuracy']:.3f}; "
          f"batch {ours['batch_accuracy']:.3f} vs {before['batch_accuracy']:.3f}")
    assert ours["cell_accuracy"] >= before["cell_accuracy"] + 0.02
    assert ours["batch_accuracy"] >= before["batch_accuracy"]
    assert ours["cell_accuracy"] > 0.4  # chance: about 0.17
    again = MarkerBaseline().fit(train.sample(frac=1.0, random_state=3))  # same cells, another order
    cells, cands = list(test.iloc[0]["cell_genes"]), list(test.iloc[0]["candidates"])
    np.testing.assert_allclose(again.score_matrix(cells, cands), model.score_matrix(cells, cands), atol=1e-4)
    assert [model.predict(p) for p in test.to_dict("records")] == [again.predict(p) for p in test.to_dict("records")]


# ------------------------------------------------------------------ candidates never seen in training
def test_names_give_markers_with_their_sign_and_the_words_they_share():
    assert markers("CD14-low, CD16-positive monocyte") == {"CD14": -1.0, "FCGR3A": 1.0}
    assert markers("CD4+/CD25 T Reg") == {"CD4": 1.0, "IL2RA": 1.0}
    assert markers("CD56+ NK") == {"NCAM1": 1.0}
    assert markers("GATA3-negative cell", genes=["GATA3"]) == {"GATA3": -1.0}
    assert markers("B cell", genes=["B"]) == {}  # one letter is a word, not a gene
    assert words("CD8-positive, alpha-beta T cell") == {"alpha-beta", "t"}
    assert words("CD14-positive monocyte") == words("CD14-low, CD16-positive monocyte") == {"monocyte"}


def test_unseen_types_are_scored_from_their_names():
    def cell(*head):
        return [*head, "G1", "G2", "G3"]

    train = [{"cell_genes": [cell("LYZ", "CD14"), cell("MS4A1", "CD79A"), cell("CD3E", "IL7R")],
              "candidates": ["B cell", "CD14-positive monocyte", "T cell"],
              "answer": ["CD14-positive monocyte", "B cell", "T cell"]}] * 1
    model = MarkerBaseline().fit([{**p, "cell_ids": [f"c{i}{j}" for j in range(3)]} for i, p in enumerate(train * 20)])
    cells = [cell("LYZ", "FCGR3A"), cell("MS4A1", "CD79A"), cell("NKG7", "CD8A"), cell("LYZ", "CD14")]
    cands = ["CD14-low, CD16-positive monocyte", "B cell", "CD8-positive cytotoxic cell", "CD14-positive monocyte"]
    assert model.assign(cells, cands) == cands
    s = model.score_matrix(cells, cands)
    assert s[0, 0] > s[1, 0] and s[0, 0] > s[3, 0]  # the monocyte word and CD16 up, CD14 down
    neutral = MarkerBaseline(BaselineConfig(name_prior=0)).fit(train)
    assert np.all(neutral.score_matrix(cells, cands)[:, [0, 2]] == -math.log(3))
    # a name that differs from a trained one only in punctuation is that type
    same = model.score_matrix(cells, ["CD14 positive monocyte"])
    assert same.tolist() == model.score_matrix(cells, cands[3:]).tolist()


def test_fit_counts_a_reused_cell_once():
    p = {"cell_ids": ["c1"], "cell_genes": [["X"]], "candidates": ["t"], "answer": ["t"]}
    model = MarkerBaseline().fit([p, p, {**p, "cell_ids": ["c2"]}])
    assert model.cells == {"t": 2}
    with pytest.raises(InputError, match="no training cells"):
        MarkerBaseline().fit([])


def test_save_load_roundtrip(tmp_path, fitted):
    path = tmp_path / "baseline.json"
    fitted.save(path)
    loaded = MarkerBaseline.load(path)
    cells, cands = [["A_MARK0"], ["C_MARK2", "G3"]], ["type C", "type A"]
    np.testing.assert_allclose(loaded.score_matrix(cells, cands), fitted.score_matrix(cells, cands), rtol=1e-6)
    assert loaded.cfg == fitted.cfg
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a marker baseline"):
        MarkerBaseline.load(tmp_path / "bad.json")
    (tmp_path / "v1.json").write_text(json.dumps({"format": "cello-marker-baseline", "version": 1, "types": []}))
    with pytest.raises(InputError, match="fit it again"):
        MarkerBaseline.load(tmp_path / "v1.json")


def test_completion_is_scored_like_an_llm(fitted):
    p = synthetic_puzzles(1, seed=5).iloc[0].to_dict()
    labels = fitted.predict(p)
    s = score(MarkerBaseline.completion(labels), list(p["answer"]))
    assert s.valid and s.reward == 1.0


def test_predict_from_eval_record_matches_puzzle_row(fitted):
    p = synthetic_puzzles(1, seed=6).iloc[0].to_dict()
    messages = PromptTemplate().messages(p["context"], p["cell_genes"], p["candidates"])
    record = {"id": p["puzzle_id"], "messages": messages, "answer": p["answer"]}
    assert fitted.predict(record) == fitted.predict(p)
    with pytest.raises(InputError, match="neither"):
        fitted.predict({"id": "x", "answer": ["a"]})


def test_files_and_cli(tmp_path, capsys):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    synthetic_puzzles(50, seed=7).to_parquet(train)
    synthetic_puzzles(15, seed=8, prefix="t").to_parquet(test)
    model, preds, metrics = tmp_path / "b.json", tmp_path / "out" / "pred.jsonl", tmp_path / "m.json"
    fit = ["baseline", "fit", str(train), "-o", str(model), "--top-k", "15"]
    assert main([*fit, "--params", defaults_params(tmp_path)]) == 0
    assert json.loads(model.read_text())["config"]["top_k"] == 15
    assert main(["baseline", "predict", str(model), str(test), "-o", str(preds), "--metrics", str(metrics),
                 "--params", defaults_params(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cell accuracy" in out and "chance" in out
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(lines) == 15
    for key in ("id", "n", "dataset", "completion", "labels", "valid", "reward", "correct"):
        assert key in lines[0]
    assert json.loads(metrics.read_text())["overall"]["count"] == 15
    # bad inputs are user errors (exit 2), not tracebacks
    assert main(["baseline", "predict", str(tmp_path / "missing.json"), str(test), "-o", str(preds)]) == 2
    assert main(["baseline", "fit", str(tmp_path / "x.csv"), "-o", str(model)]) == 2
    for argv in (["baseline", "--help"], ["baseline", "fit", "--help"], ["baseline", "predict", "--help"]):
        assert main(argv) == 0


def test_predict_baseline_library_call(tmp_path, fitted):
    test = tmp_path / "test.parquet"
    synthetic_puzzles(10, seed=9, prefix="t").to_parquet(test)
    summary = predict_baseline(fitted, test, tmp_path / "p.jsonl", n_boot=50)
    assert summary.metrics["overall"]["count"] == 10
    ns = pd.read_parquet(test)["n"]
    assert summary.chance_cell == pytest.approx(len(ns) / ns.sum())  # micro: one expected hit per puzzle
    assert "N=" in summary.render()
    fit_baseline(test, tmp_path / "again.json")
    assert (tmp_path / "again.json").exists()


_DATA_MODULES = ("cello.data.cells", "cello.data.puzzles", "cello.data.split")


def _missing_data_modules() -> list[str]:
    return [m for m in _DATA_MODULES if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(
    bool(_missing_data_modules()), reason=f"demo data commands not available yet (missing: {_missing_data_modules()})"
)
def test_marker_baseline_beats_chance_on_demo_split(tmp_path, capsys):
    """Real PBMCs (scanpy's pbmc68k_reduced): fit on the demo train split, score the test split."""
    if importlib.util.find_spec("scanpy") is None:
        pytest.skip("scanpy (the `data` extra) is not installed: the demo dataset ships inside it")
    cells, splits = tmp_path / "cells.parquet", tmp_path / "splits"
    none = defaults_params(tmp_path)  # built-in defaults, whatever params.yaml says
    assert main(["data", "cells", "builtin:pbmc68k", "-o", str(cells), "--params", none]) == 0
    assert main(["data", "split", str(cells), "-o", str(splits), "--min-n", "4", "--max-n", "8",
                 "--per-n", "40", "--test-size", "20", "--params", none]) == 0
    model, preds = tmp_path / "baseline.json", tmp_path / "pred.jsonl"
    assert main(["baseline", "fit", str(splits / "train.parquet"), "-o", str(model), "--params", none]) == 0
    summary = predict_baseline(model, splits / "test.parquet", preds, n_boot=200)
    test = pd.read_parquet(splits / "test.parquet")
    chance = _accuracy(ChanceBaseline(0).predict, test)
    marker = summary.metrics["overall"]
    with capsys.disabled():
        print(f"\ndemo split ({marker['count']} test puzzles, N 4-8): marker baseline cell accuracy "
              f"{marker['cell_accuracy']:.3f} "
              f"[{marker['cell_accuracy_ci'][0]:.3f}, {marker['cell_accuracy_ci'][1]:.3f}], "
              f"batch {marker['batch_accuracy']:.3f}; "
              f"chance: expected cell {summary.chance_cell:.3f}, observed cell {chance['cell_accuracy']:.3f}, "
              f"expected batch {summary.chance_batch:.4f}")
    assert marker["count"] >= 10
    assert marker["cell_accuracy"] >= summary.chance_cell + 0.3
    assert marker["cell_accuracy_ci"][0] > chance["cell_accuracy"]
    assert marker["batch_accuracy"] > summary.chance_batch + 0.1
