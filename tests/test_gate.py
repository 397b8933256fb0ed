"""cello.gate and `cello eval gate`: decisions on constructed runs.

Each run is a real `evaluate()` over one synthetic split (80 puzzles, N = 4) by an oracle that
answers a chosen set of puzzles right and swaps two cells in the others, so metrics.json and
predictions.jsonl are exactly what `cello eval` writes, with known per-puzzle values.
"""

from __future__ import annotations

import json

import pytest

from cello.cli import main
from cello.config import EvalConfig, GateConfig
from cello.data.prompt import PromptTemplate
from cello.evaluate import METRICS, PREDICTIONS, evaluate
from cello.gate import gate
from tests.conftest import defaults_params

K = 80
TYPES = ["B cell", "T cell", "NK cell", "monocyte"]
CFG = GateConfig(min_accuracy=0.5, regression_tolerance=0.02, baseline_margin=0.0, min_puzzles=20, n_boot=1000)


class Oracle:
    """Right on the puzzles in `right`, two cells swapped (valid, not exact) elsewhere."""

    kind, chunk_size = "test", 32

    def __init__(self, name: str, right: set[int]) -> None:
        self.name, self.right = name, right

    def predict(self, items, progress=None):
        out = []
        for it in items:
            labels = list(it["answer"])
            if int(it["id"][1:]) not in self.right:
                labels[0], labels[1] = labels[1], labels[0]
            out.append((PromptTemplate().render_answer(labels, reasoning="r"), {}))
        return out

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "test.jsonl"
    p = PromptTemplate()
    with open(path, "w") as fh:
        for i in range(K):
            answer = TYPES[i % 4:] + TYPES[:i % 4]
            rec = {"id": f"p{i}", "dataset": "d", "group": "g", "n": 4, "answer": answer, "candidates": sorted(TYPES),
                   "messages": p.messages("", [["G1"]] * 4, sorted(TYPES))}
            fh.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(split, tmp_path_factory):
    """name -> metrics.json of a run that is right on the first `share` of the puzzles."""
    root = tmp_path_factory.mktemp("gate-runs")
    shares = {"cand70": 56, "inc65": 52, "inc90": 72, "cand55": 44, "inc_plus1": 57, "base30": 24,
              "cand40": 32, "base70": 56}
    out = {}
    for name, right in shares.items():
        evaluate(
            split, root / name, predictor=Oracle(name, set(range(right))), cfg=EvalConfig(n_boot=200), progress=False
        )
        out[name] = root / name / METRICS
    evaluate(
        split,
        root / "cand_limited",
        predictor=Oracle("cand_limited", set(range(40))),
        cfg=EvalConfig(n_boot=200, limit=40),
        progress=False,
    )
    out["cand_limited"] = root / "cand_limited" / METRICS
    return out


def _by_rule(decision) -> dict:
    return {r.rule: r for r in decision.reasons}


def test_pass(runs, tmp_path):
    d = gate(runs["cand70"], incumbent=runs["inc65"], baseline=runs["base30"], cfg=CFG, out=tmp_path / "d.json")
    assert d.passed
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["passed"] is True
    assert [r["rule"] for r in saved["reasons"]] == ["coverage", "min_accuracy", "no_regression", "beats_baseline"]
    for r in saved["reasons"]:
        assert set(r) >= {"rule", "passed", "value", "threshold", "message"} and r["passed"] is True
    reg = _by_rule(d)["no_regression"].detail
    assert reg["paired"] == K and reg["diff"]["mean"] == pytest.approx(0.70 - 0.65)
    assert reg["diff"]["lo"] <= reg["diff"]["mean"] <= reg["diff"]["hi"]


def test_fail_on_threshold_only(runs):
    d = gate(runs["cand40"], baseline=runs["base30"], cfg=CFG)
    rules = _by_rule(d)
    assert not d.passed and not rules["min_accuracy"].passed
    assert (rules["min_accuracy"].value, rules["min_accuracy"].threshold) == (pytest.approx(0.4), 0.5)
    assert rules["beats_baseline"].passed and rules["coverage"].passed


def test_fail_on_regression_against_the_incumbent(runs):
    d = gate(runs["cand55"], incumbent=runs["inc90"], baseline=runs["base30"], cfg=CFG)
    rules = _by_rule(d)
    assert not d.passed
    assert rules["min_accuracy"].passed and rules["beats_baseline"].passed
    reg = rules["no_regression"]
    assert not reg.passed and reg.value < -CFG.regression_tolerance and reg.threshold == -CFG.regression_tolerance
    assert reg.detail["diff"]["mean"] == pytest.approx(0.55 - 0.90)


def test_a_drop_within_noise_passes_significant_but_not_non_inferiority(runs):
    # one puzzle worse than the incumbent: -0.0125, inside the tolerance, but 80 puzzles cannot show that
    sig = _by_rule(gate(runs["cand70"], incumbent=runs["inc_plus1"], baseline=runs["base30"], cfg=CFG))["no_regression"]
    assert sig.passed and sig.detail["diff"]["mean"] == pytest.approx(-1 / K)
    strict = CFG.model_copy(update={"regression_test": "non_inferiority"})
    ni = _by_rule(gate(runs["cand70"], incumbent=runs["inc_plus1"], baseline=runs["base30"], cfg=strict))[
        "no_regression"
    ]
    assert not ni.passed and ni.value == ni.detail["diff"]["lo"] < -CFG.regression_tolerance


def test_fail_against_the_baseline(runs):
    d = gate(runs["cand70"], incumbent=runs["inc65"], baseline=runs["base70"], cfg=CFG)  # a tie is not a win
    rules = _by_rule(d)
    assert not d.passed and not rules["beats_baseline"].passed
    assert rules["beats_baseline"].threshold == pytest.approx(0.70)
    assert all(rules[r].passed for r in ("coverage", "min_accuracy", "no_regression"))
    assert (
        gate(runs["cand70"], baseline=runs["base30"], cfg=CFG.model_copy(update={"baseline_margin": 0.5})).passed
        is False
    )
    assert not _by_rule(gate(runs["cand70"], cfg=CFG))["beats_baseline"].passed  # no baseline given


def test_no_incumbent_is_a_first_deployment(runs):
    d = gate(runs["cand70"], baseline=runs["base30"], cfg=CFG)
    reg = _by_rule(d)["no_regression"]
    assert d.passed and reg.passed and "no incumbent" in reg.message


def test_missing_predictions_and_other_puzzles(runs, tmp_path):
    lone = tmp_path / "lone" / METRICS  # metrics without their predictions.jsonl
    lone.parent.mkdir()
    lone.write_text(runs["inc65"].read_text())
    d = gate(runs["cand70"], incumbent=lone, baseline=runs["base30"], cfg=CFG)
    assert not _by_rule(d)["no_regression"].passed and "incumbent" in _by_rule(d)["no_regression"].message
    given = gate(
        runs["cand70"],
        incumbent=lone,
        baseline=runs["base30"],
        cfg=CFG,
        incumbent_predictions=runs["inc65"].parent / PREDICTIONS,
    )
    assert given.passed
    lax = gate(
        runs["cand70"], incumbent=lone, baseline=runs["base30"], cfg=CFG.model_copy(update={"require_paired": False})
    )
    assert lax.passed and _by_rule(lax)["no_regression"].detail["method"] == "point_estimate"
    # a --limit run covers other puzzles than the baseline, and too few
    cov = _by_rule(gate(runs["cand_limited"], baseline=runs["base30"], cfg=CFG.model_copy(update={"min_puzzles": 50})))[
        "coverage"
    ]
    assert not cov.passed and cov.detail["fingerprint_mismatch"] == ["baseline"]


@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory):
    """Two runs on a split of 40 puzzles with N = 2 and N = 6 alternating: the candidate is right
    on every N = 6 puzzle and wrong on every N = 2 one (0/2); the incumbent right on N = 2 and
    4/6 on N = 6. Micro cell accuracy (the paper's): both 120/160; macro: 0.5 vs 0.83."""
    root = tmp_path_factory.mktemp("gate-mixed")
    types, p = ["B cell", "T cell", "NK cell", "monocyte", "platelet", "DC"], PromptTemplate()
    with open(root / "test.jsonl", "w") as fh:
        for i in range(40):
            answer = types[:2] if i % 2 == 0 else types
            fh.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "n": len(answer),
                        "answer": answer,
                        "candidates": sorted(answer),
                        "messages": p.messages("", [["G1"]] * len(answer), sorted(answer)),
                    }
                )
                + "\n"
            )
    out = {}
    for name, right in (("cand", set(range(1, 40, 2))), ("inc", set(range(0, 40, 2)))):
        evaluate(
            root / "test.jsonl", root / name, predictor=Oracle(name, right), cfg=EvalConfig(n_boot=200), progress=False
        )
        out[name] = root / name / METRICS
    return out


def test_cell_accuracy_gate_uses_the_ratio_of_sums(mixed_runs):
    cand, inc = (json.loads(mixed_runs[k].read_text())["overall"] for k in ("cand", "inc"))
    assert cand["cell_accuracy"] == inc["cell_accuracy"] == pytest.approx(120 / 160)
    assert (cand["cell_accuracy_macro"], inc["cell_accuracy_macro"]) == (pytest.approx(0.5), pytest.approx(5 / 6))
    cfg = CFG.model_copy(update={"metric": "cell_accuracy"})
    reg = _by_rule(gate(mixed_runs["cand"], incumbent=mixed_runs["inc"], cfg=cfg))["no_regression"]
    assert reg.detail["statistic"] == "ratio of sums" and reg.detail["paired"] == 40
    assert reg.detail["candidate"] == pytest.approx(0.75) and reg.detail["incumbent"] == pytest.approx(0.75)
    assert reg.detail["diff"]["mean"] == pytest.approx(0.0) and reg.passed  # the macro figure would show -0.33
    assert reg.detail["diff"]["lo"] <= 0.0 <= reg.detail["diff"]["hi"]
    batch = _by_rule(gate(mixed_runs["cand"], incumbent=mixed_runs["inc"], cfg=CFG))["no_regression"]
    assert batch.detail["statistic"] == "mean" and batch.detail["diff"]["mean"] == pytest.approx(0.0)


def test_cli_exit_codes_and_decision_file(runs, tmp_path):
    none = defaults_params(tmp_path)
    out = tmp_path / "decision.json"
    args = [
        "eval",
        "gate",
        "--candidate",
        str(runs["cand55"]),
        "--incumbent",
        str(runs["inc90"]),
        "--baseline",
        str(runs["base30"]),
        "-o",
        str(out),
        "--params",
        none,
        "--min-accuracy",
        "0.5",
    ]
    assert main(args) == 0  # rejected, but the decision itself succeeded
    saved = json.loads(out.read_text())
    assert saved["passed"] is False and saved["config"]["min_accuracy"] == 0.5
    assert main([*args, "--fail-on-reject"]) == 1
    ok = [
        "eval",
        "gate",
        "--candidate",
        str(runs["cand70"]),
        "--baseline",
        str(runs["base30"]),
        "--params",
        none,
        "--fail-on-reject",
    ]
    assert main(ok) == 0 and json.loads((runs["cand70"].parent / "decision.json").read_text())["passed"] is True
    assert main(["eval", "gate", "--candidate", str(tmp_path / "nope.json"), "--params", none]) == 2
    assert main(["eval", "gate", "--candidate", str(runs["cand70"]), "--metric", "bogus", "--params", none]) == 2


def test_eval_and_gate_write_the_card_and_name_the_data_version(split, tmp_path):
    """A checkpoint with a card, evaluated on versioned records: metrics, report, decision and the
    card name the data version; rerunning eval and gate replaces their card sections."""
    from cello.card import CARD, write_card
    from cello.lineage import dvc_data_version
    from tests.test_card import versioned_records

    records = versioned_records(tmp_path / "project", kinds=("eval",))
    versioned = records / "eval" / "test.jsonl"
    versioned.write_text(split.read_text())
    model = tmp_path / "grpo" / "model"
    model.mkdir(parents=True)
    write_card(model, stage="grpo", base_model=None, records=None)
    version = dvc_data_version(tmp_path / "project" / "dvc.lock")["version"]
    for _ in range(2):
        evaluate(
            versioned,
            tmp_path / "cand",
            predictor=Oracle("cand", set(range(60))),
            model=str(model.parent),
            cfg=EvalConfig(n_boot=200),
            progress=False,
            overwrite=True,
        )
        evaluate(
            versioned,
            tmp_path / "base",
            predictor=Oracle("base", set(range(20))),
            cfg=EvalConfig(n_boot=200),
            progress=False,
            overwrite=True,
        )
        decision = gate(
            tmp_path / "cand" / METRICS, baseline=tmp_path / "base" / METRICS, cfg=CFG, out=tmp_path / "decision.json"
        )
    metrics = json.loads((tmp_path / "cand" / METRICS).read_text())
    assert metrics["data_version"]["version"] == version and metrics["model_dir"] == str(model)
    assert f"data version: `{version}`" in (tmp_path / "cand" / "report.md").read_text()
    saved = json.loads((tmp_path / "decision.json").read_text())
    assert decision.passed and saved["data_version"] == version
    assert saved["data_versions"] == {"candidate": version, "baseline": version}
    card = (model / CARD).read_text()
    assert card.count("## Evaluation") == 1 and card.count("## Gate: PASS") == 1
    assert f"`{version}`" in card.split("## Evaluation")[1] and "[" in card.split("**overall**")[1]
    assert "data version `" + version in card.split("## Gate")[1]


def test_a_hub_model_as_incumbent_is_evaluated_on_the_candidates_puzzles(split, hub_model, tmp_path):
    """`--incumbent hf://ORG/NAME`: the model (here the tiny model in a Hub cache, offline) is
    evaluated first on the candidate's split and puzzles, then compared puzzle by puzzle."""
    evaluate(
        split,
        tmp_path / "cand",
        predictor=Oracle("cand", set(range(6))),
        cfg=EvalConfig(n_boot=200, limit=6),
        progress=False,
    )
    params = tmp_path / "params.yaml"
    params.write_text("generation:\n  sampling:\n    max_new_tokens: 4\neval:\n  n_boot: 200\n")
    out = tmp_path / "gate" / "decision.json"
    assert (
        main(
            [
                "eval",
                "gate",
                "--candidate",
                str(tmp_path / "cand" / METRICS),
                "--incumbent",
                hub_model,
                "-o",
                str(out),
                "--params",
                str(params),
            ]
        )
        == 0
    )
    inc = json.loads((tmp_path / "gate" / "incumbent" / METRICS).read_text())
    cand = json.loads((tmp_path / "cand" / METRICS).read_text())
    assert inc["model"] == "tiny-cell" and inc["overall"]["count"] == 6 and inc["puzzles"] == cand["puzzles"]
    saved = json.loads(out.read_text())
    assert saved["incumbent"] == str(tmp_path / "gate" / "incumbent" / METRICS)
    regression = {r["rule"]: r for r in saved["reasons"]}["no_regression"]
    assert regression["detail"]["method"] == "paired_bootstrap" and regression["detail"]["paired"] == 6
