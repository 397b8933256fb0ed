"""Tests for cello.data.split: cells held out first, puzzles per side (leakage-free by
construction, test sets of the size asked), and the overlap audit."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cello.config import PuzzlesConfig, SplitConfig
from cello.data.prompt import PromptTemplate
from cello.data.puzzles import distinct_sets
from cello.data.records import export_split
from cello.data.split import audit_overlap, audit_paths, make_split, quota_over_n, split_cells
from cello.errors import InputError
from tests.conftest import defaults_params


def make_cells(donors: dict[tuple[str, str], int], *, types: int = 6) -> pd.DataFrame:
    """`cells_per_type` cells of each of `types` types for each (dataset, donor)."""
    rows = []
    for (ds, donor), per_type in donors.items():
        for t in range(types):
            for i in range(per_type):
                cid = f"{ds}:{donor}:T{t}:{i}"
                rows.append({"cell_id": cid, "dataset": ds, "donor_id": donor, "batch": "",
                             "cell_type": f"T{t}", "top_genes": [f"M{t}", cid], "context": ""})
    return pd.DataFrame(rows)


PCFG = PuzzlesConfig(min_n=3, max_n=6, per_n=10, seed=0)
RICH = make_cells({("a", "d1"): 8, ("a", "d2"): 8, ("b", "e1"): 8, ("b", "e2"): 8})
SCARCE = make_cells({("a", "d1"): 3})


def cell_set(df: pd.DataFrame) -> set[str]:
    return {c for ids in df["cell_ids"] for c in ids}


def donor_set(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["dataset"], df["donor_id"], strict=True))


def by_n(df: pd.DataFrame) -> dict[int, int]:
    return {int(n): int(c) for n, c in df["n"].value_counts().sort_index().items()}


# ---------------------------------------------------------------- quotas
def test_test_quota_is_even_over_n():
    assert quota_over_n(30, 3, 8) == {3: 5, 4: 5, 5: 5, 6: 5, 7: 5, 8: 5}
    assert quota_over_n(8, 3, 5) == {3: 3, 4: 3, 5: 2}
    assert quota_over_n(2, 3, 6) == {3: 1, 4: 1, 5: 0, 6: 0}


def test_distinct_sets():
    assert distinct_sets([2, 3, 4], 2) == 2 * 3 + 2 * 4 + 3 * 4
    assert distinct_sets([1, 1, 1], 3) == 1 and distinct_sets([5, 5], 3) == 0


# ---------------------------------------------------------------- by cell
def test_by_cell_is_leak_free_and_gives_each_side_its_quota():
    train, test, summary = split_cells(RICH, cfg=SplitConfig(test_fraction=0.25, test_size=40), puzzles=PCFG)
    assert not cell_set(train) & cell_set(test)
    assert by_n(test) == {3: 10, 4: 10, 5: 10, 6: 10}  # the size asked, evenly over N
    assert by_n(train) == {n: 10 * 2 for n in range(3, 7)}  # per_n per N per dataset, nothing dropped
    assert summary.test_cells == 4 * 6 * 2 and summary.train_cells == 4 * 6 * 6  # 2 of 8 per donor and type
    assert summary.test_donors == summary.train_donors == 4  # every donor on both sides
    assert summary.audit["test_sharing_cell_id"] == 0 and summary.identical_cell_overlap == 0
    assert len(set(map(frozenset, test["cell_ids"]))) == len(test)  # no test puzzle repeated
    assert "split by cell" in summary.render()


def test_by_cell_keeps_single_cells_in_train():
    cells = make_cells({("a", "d1"): 2})
    cells = pd.concat([cells, make_cells({("a", "d1"): 1}, types=7).tail(1)])  # one cell of a 7th type
    _, test, summary = split_cells(cells, cfg=SplitConfig(test_fraction=0.1, test_size=4), puzzles=PCFG)
    assert summary.test_cells == 6 and "T6" not in {t for a in test["answer"] for t in a}


def test_same_seed_same_split_row_order_does_not_matter_other_seed_differs():
    cfg = SplitConfig(test_fraction=0.25, test_size=20, seed=3)
    a = split_cells(RICH, cfg=cfg, puzzles=PCFG)
    b = split_cells(RICH.sample(frac=1.0, random_state=1), cfg=cfg, puzzles=PCFG)
    c = split_cells(RICH, cfg=cfg.model_copy(update={"seed": 4}), puzzles=PCFG)
    for x, y in ((a[0], b[0]), (a[1], b[1])):
        pd.testing.assert_frame_equal(x, y)
    assert cell_set(a[1]) != cell_set(c[1])


def test_a_test_set_the_held_out_cells_cannot_make_is_an_error():
    with pytest.raises(InputError) as exc:
        split_cells(SCARCE, cfg=SplitConfig(test_fraction=0.3, test_size=40), puzzles=PCFG)
    text = str(exc.value)
    assert "held-out cells" in text and "N=5" in text and "make only 6 different" in text and "--test-size" in text


# ---------------------------------------------------------------- by donor / dataset
def test_named_donors_are_held_out_whole():
    cfg = SplitConfig(test_donors=["d2", "e1"], test_size=12)
    assert cfg.by == "donor"
    train, test, summary = split_cells(RICH, cfg=cfg, puzzles=PCFG)
    assert donor_set(test) == {("a", "d2"), ("b", "e1")} and not donor_set(train) & donor_set(test)
    assert summary.held_out == ["a/d2", "b/e1"] and len(test) == 12
    assert by_n(train) == {n: 20 for n in range(3, 7)}
    only = split_cells(RICH, cfg=SplitConfig(test_donors=["b/e2"], test_size=4), puzzles=PCFG)[1]
    assert donor_set(only) == {("b", "e2")}


def test_random_donors_reach_the_fraction():
    train, test, summary = split_cells(RICH, cfg=SplitConfig(by="donor", test_fraction=0.4, test_size=8), puzzles=PCFG)
    assert len(summary.held_out) == 2 and not donor_set(train) & donor_set(test)


def test_named_datasets_are_held_out_whole():
    train, test, summary = split_cells(RICH, cfg=SplitConfig(test_datasets=["b"], test_size=16), puzzles=PCFG)
    assert summary.by == "dataset" and set(test["dataset"]) == {"b"} and set(train["dataset"]) == {"a"}
    assert by_n(test) == {n: 4 for n in range(3, 7)}


@pytest.mark.parametrize(("cfg", "problem"), [
    (SplitConfig(test_donors=["zz"]), "no donor named ['zz']"),
    (SplitConfig(test_donors=["d1", "d2", "e1", "e2"]), "leaves no cells to train on"),
    (SplitConfig(test_datasets=["a", "b"]), "leaves no cells to train on"),
])
def test_bad_held_out_names(cfg, problem):
    with pytest.raises(InputError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        split_cells(RICH, cfg=cfg, puzzles=PCFG)


def test_by_donor_needs_two_donors_and_named_units_need_their_unit():
    with pytest.raises(InputError) as exc:
        split_cells(SCARCE, cfg=SplitConfig(by="donor"), puzzles=PCFG)
    assert "at least 2 donors" in str(exc.value) and "--by cell" in str(exc.value)
    with pytest.raises(ValueError, match="set split.by: donor"):
        SplitConfig(by="dataset", test_donors=["d1"])
    with pytest.raises(ValueError, match="not both"):
        SplitConfig(test_donors=["d1"], test_datasets=["a"])


def test_a_held_out_donor_with_too_few_types_is_an_error():
    cells = pd.concat([make_cells({("a", "d1"): 4}), make_cells({("a", "d2"): 4}, types=4)])
    with pytest.raises(InputError, match="N=5 were asked for, but these cells make only 0"):
        split_cells(cells, cfg=SplitConfig(test_donors=["d2"], test_size=8), puzzles=PCFG)


# ---------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4), seed=st.integers(0, 1000),
       fraction=st.floats(0.05, 0.6), size=st.integers(1, 30), by=st.sampled_from(["cell", "donor"]))
def test_split_never_leaks_and_is_the_size_asked(sizes, seed, fraction, size, by):
    cells = make_cells({("ds", f"d{i}"): s for i, s in enumerate(sizes)}, types=4)
    pcfg = PuzzlesConfig(min_n=3, max_n=4, per_n=4, seed=seed)
    try:
        train, test, summary = split_cells(
            cells, cfg=SplitConfig(by=by, test_fraction=fraction, test_size=size, seed=seed), puzzles=pcfg)
    except InputError as exc:  # small tables may not make the test set asked; that must be said, not written
        assert "different ones" in str(exc) or "no puzzle can be made" in str(exc)
        return
    assert not cell_set(train) & cell_set(test)
    if by == "donor":
        assert not donor_set(train) & donor_set(test)
    assert len(test) == size and summary.test_total == size and summary.train_total == len(train)
    assert audit_overlap(train, test).test_sharing_cell_id == 0


# ---------------------------------------------------------------- audit
def puzzle(pid: str, cells: list[tuple[str, list[str]]]) -> dict:
    return {"puzzle_id": pid, "dataset": "x", "group": "g", "donor_id": "g", "n": len(cells),
            "cell_ids": [c for c, _ in cells], "cell_genes": [g for _, g in cells], "context": "",
            "candidates": sorted(f"T{i}" for i in range(len(cells))),
            "answer": [f"T{i}" for i in range(len(cells))]}


AUDIT_TRAIN = pd.DataFrame([
    puzzle("tr1", [("c1", ["A", "B"]), ("c2", ["C", "D"])]),
    puzzle("tr2", [("c3", ["E", "F"]), ("c4", ["G", "H"])]),
])
AUDIT_TEST = pd.DataFrame([
    puzzle("te1", [("z1", ["A", "B"]), ("z2", ["X", "Y"])]),  # identical to c1 under another id
    puzzle("te2", [("z3", ["B", "A"]), ("z4", ["Q", "R"])]),  # same genes, other rank: not identical
    puzzle("te3", [("c4", ["G", "H"]), ("z5", ["C", "D"])]),  # shares an id and two gene lists
    puzzle("te4", [("z6", ["A", "B"]), ("z7", ["S", "T"])]),  # identical to c1 again
])


def test_audit_counts_identical_cells_under_any_id():
    report = audit_overlap(AUDIT_TRAIN, AUDIT_TEST)
    assert report.test_sharing_identical_cell == 3
    assert report.test_sharing_cell_id == 1
    assert report.shared_gene_lists == 3  # A,B / C,D / G,H
    assert report.test_cells == 8 and report.test_cells_identical == 4
    assert report.examples == ["te1", "te3", "te4"]
    assert "3 (75.0%)" in report.render()


def test_audit_paths_parquet_and_published(tmp_path):
    AUDIT_TRAIN.to_parquet(tmp_path / "train.parquet")
    AUDIT_TEST.to_parquet(tmp_path / "test.parquet")
    out = tmp_path / "report" / "audit.json"
    report = audit_paths(tmp_path / "train.parquet", tmp_path / "test.parquet", template=PromptTemplate(), out=out)
    assert json.loads(out.read_text()) == report.to_dict()
    assert report.test_sharing_identical_cell == 3
    # The same pair as published records: ids are lost, identical gene lists are still found.
    export_split(tmp_path, tmp_path / "pub", fmt="cellpuzzles", template=PromptTemplate())
    published = audit_paths(tmp_path / "pub" / "train.json", tmp_path / "pub" / "test.json", template=PromptTemplate())
    assert published.test_sharing_identical_cell == 3
    assert published.shared_gene_lists == 3
    mixed = audit_paths(tmp_path / "train.parquet", tmp_path / "pub" / "test.json", template=PromptTemplate())
    assert mixed.test_sharing_identical_cell == 3 and mixed.test_sharing_cell_id == 0
    (tmp_path / "train.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="neither a JSON list"):
        audit_paths(tmp_path / "train.csv", tmp_path / "test.parquet", template=PromptTemplate())


# ---------------------------------------------------------------- files
def test_make_split_writes_one_directory(tmp_path):
    src = tmp_path / "cells.parquet"
    RICH.to_parquet(src)
    out = tmp_path / "splits"
    cfg = SplitConfig(test_size=12)
    summary = make_split(src, out, cfg=cfg, puzzles=PCFG)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "test.parquet", "train.parquet"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary.to_dict()))
    assert saved["test_total"] == len(pd.read_parquet(out / "test.parquet")) == 12
    train, _, _ = split_cells(RICH, cfg=cfg, puzzles=PCFG)
    assert pd.read_parquet(out / "train.parquet")["puzzle_id"].tolist() == train["puzzle_id"].tolist()
    # A failed split leaves the earlier output as it was and no temporary directory.
    SCARCE.to_parquet(tmp_path / "one_donor.parquet")
    with pytest.raises(InputError, match="2 donors"):
        make_split(tmp_path / "one_donor.parquet", out, cfg=SplitConfig(by="donor"), puzzles=PCFG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.parquet", "one_donor.parquet", "splits"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "test.parquet", "train.parquet"]
    with pytest.raises(InputError, match="no such file"):
        make_split(tmp_path / "absent.parquet", out, cfg=SplitConfig(), puzzles=PCFG)
    with pytest.raises(InputError, match="a puzzles table"):
        make_split(out / "train.parquet", tmp_path / "s2", cfg=SplitConfig(), puzzles=PCFG)


def test_cli_split_and_audit(tmp_path, capsys):
    from cello.cli import main

    src = tmp_path / "cells.parquet"
    RICH.to_parquet(src)
    none = defaults_params(tmp_path)
    n_flags = ["--min-n", "3", "--max-n", "6", "--per-n", "5"]
    assert main(["data", "split", str(src), "-o", str(tmp_path / "splits"), "--test-size", "8", *n_flags,
                 "--params", none]) == 0
    assert "split by cell" in capsys.readouterr().out
    args = ["data", "audit", str(tmp_path / "splits" / "train.parquet"), str(tmp_path / "splits" / "test.parquet")]
    assert main([*args, "-o", str(tmp_path / "audit.json"), "--params", none]) == 0
    assert "identical cell" in capsys.readouterr().out
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["test_puzzles"] == 8 and report["test_sharing_cell_id"] == 0  # the independent check agrees
    assert main(["data", "split", str(src), "-o", str(tmp_path / "s2"), "--test-donors", "d1,e2", "--test-size", "4",
                 *n_flags, "--params", none]) == 0
    assert "split by donor" in capsys.readouterr().out
    assert set(pd.read_parquet(tmp_path / "s2" / "test.parquet")["donor_id"]) == {"d1", "e2"}
    assert main(["data", "split", str(src), "-o", str(tmp_path / "s3"), "--test-datasets", "a", "--test-size", "4",
                 *n_flags, "--params", none]) == 0
    assert set(pd.read_parquet(tmp_path / "s3" / "test.parquet")["dataset"]) == {"a"}
    SCARCE.to_parquet(tmp_path / "one.parquet")
    assert main(["data", "split", str(tmp_path / "one.parquet"), "-o", str(tmp_path / "s4"), "--by", "donor",
                 "--params", none]) == 2
    assert "at least 2 donors" in capsys.readouterr().err
