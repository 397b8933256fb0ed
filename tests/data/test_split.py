"""Tests for cello.data.split: stratified, capped, leakage-free splits, and the overlap audit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cello.config import PuzzlesConfig, SplitConfig
from cello.data.prompt import PromptTemplate
from cello.data.puzzles import build_puzzles
from cello.data.records import export_split
from cello.data.split import (
    _by_n,
    _draw,
    audit_overlap,
    audit_paths,
    cap_quota,
    make_split,
    split_puzzles,
    stratified_quota,
)
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


def make_puzzles(donors, *, per_n=10, seed=0, types=6) -> pd.DataFrame:
    cfg = PuzzlesConfig(min_n=3, max_n=types, per_n=per_n, seed=seed)
    return build_puzzles(make_cells(donors, types=types), cfg=cfg)[0]


RICH = make_puzzles({("a", "d1"): 40, ("a", "d2"): 40, ("b", "e1"): 40, ("b", "e2"): 40}, per_n=20)
SCARCE = make_puzzles({("a", "d1"): 3}, per_n=20)


def cell_set(df: pd.DataFrame) -> set[str]:
    return {c for ids in df["cell_ids"] for c in ids}


def donor_set(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["dataset"], df["donor_id"], strict=True))


def key(df: pd.DataFrame) -> list[str]:
    return df["puzzle_id"].tolist()


# ---------------------------------------------------------------- quotas
def test_stratified_quota():
    assert stratified_quota({3: 100, 4: 10, 5: 2, 6: 1}, 0.1) == {3: 10, 4: 1, 5: 1, 6: 0}
    assert stratified_quota({3: 3}, 0.9) == {3: 2}  # train keeps at least one


def test_cap_quota_is_proportional_and_exact():
    assert cap_quota({3: 10, 4: 10}, None) == {3: 10, 4: 10}
    assert cap_quota({3: 10, 4: 10}, 30) == {3: 10, 4: 10}
    assert cap_quota({3: 60, 4: 30, 5: 10}, 50) == {3: 30, 4: 15, 5: 5}
    assert cap_quota({3: 7, 4: 7, 5: 7}, 10) == {3: 4, 4: 3, 5: 3}
    assert cap_quota({3: 100, 4: 1, 5: 1}, 10) == {3: 8, 4: 1, 5: 1}  # one per N when room
    assert cap_quota({3: 5, 4: 5, 5: 5}, 2) == {3: 1, 4: 1, 5: 0}
    capped = cap_quota({n: n * 7 for n in range(3, 16)}, 100)
    assert sum(capped.values()) == 100
    assert all(1 <= capped[n] <= n * 7 for n in capped)


# ---------------------------------------------------------------- by cell
def test_by_cell_stratified_and_leak_free():
    train, test, summary = split_puzzles(RICH, cfg=SplitConfig(test_fraction=0.1, max_test=None))
    assert not cell_set(train) & cell_set(test)
    assert summary.test_by_n == {3: 4, 4: 4, 5: 4, 6: 4}  # 10% of 40 per N
    assert summary.dropped_for_leakage == len(RICH) - len(train) - len(test)
    assert set(key(train)).isdisjoint(key(test))
    assert summary.train_by_n == train["n"].value_counts().sort_index().to_dict()
    assert summary.test_datasets == test["dataset"].value_counts().sort_index().to_dict()
    assert summary.identical_cell_overlap == 0
    text = summary.render()
    assert "train" in text and "test" in text and "identical" in text


def test_cap_applied_across_n():
    _, test, summary = split_puzzles(RICH, cfg=SplitConfig(test_fraction=0.5, max_test=10))
    assert len(test) == 10
    assert sorted(summary.test_by_n.values()) == [2, 2, 3, 3]


def test_scarce_data_keeps_train_and_never_leaks():
    train, test, summary = split_puzzles(SCARCE, cfg=SplitConfig(test_fraction=0.1, max_test=None))
    assert not cell_set(train) & cell_set(test)
    assert len(train) > 0 and summary.dropped_for_leakage > 0
    assert summary.test_by_n == {3: 2, 4: 2, 5: 2, 6: 2}
    assert "dropped" in summary.render()


def test_greedy_spreads_over_groups_and_beats_a_random_draw():
    _, test, summary = split_puzzles(RICH, cfg=SplitConfig(test_fraction=0.1, max_test=None))
    assert summary.test_groups == 4  # plenty of cells: test covers every donor group
    scarce = make_puzzles({(f"ds{i}", "d"): 2 for i in range(6)}, per_n=10)
    train, test, summary = split_puzzles(scarce, cfg=SplitConfig(test_fraction=0.1, max_test=None))
    assert not cell_set(train) & cell_set(test)
    rng = np.random.default_rng(0)
    quota = cap_quota(stratified_quota(_by_n(scarce), 0.1), None)
    kept = []
    for _ in range(20):  # a plain random draw of the same size per N
        drawn = scarce.iloc[_draw(scarce, np.arange(len(scarce)), quota, rng)]
        used = cell_set(drawn)
        rest = scarce.drop(index=drawn.index)
        kept.append(sum(not used & set(ids) for ids in rest["cell_ids"]))
    assert len(train) > max(kept)


def test_same_seed_same_split_other_seed_differs():
    a = split_puzzles(RICH, cfg=SplitConfig(seed=1))
    b = split_puzzles(RICH.sample(frac=1.0, random_state=5), cfg=SplitConfig(seed=1))
    c = split_puzzles(RICH, cfg=SplitConfig(seed=2))
    assert key(a[0]) == key(b[0]) and key(a[1]) == key(b[1])
    assert a[2].to_dict() == b[2].to_dict()
    assert key(a[1]) != key(c[1])


def test_empty_splits_are_errors():
    with pytest.raises(InputError, match="test split would be empty"):
        split_puzzles(RICH.groupby("n").head(1), cfg=SplitConfig())
    one_cell = make_puzzles({("a", "d1"): 1}, per_n=3, types=3)  # every puzzle uses the same 3 cells
    with pytest.raises(InputError, match="train split would be empty"):
        split_puzzles(one_cell, cfg=SplitConfig())
    with pytest.raises(InputError, match="cell_ids"):
        split_puzzles(RICH.drop(columns=["cell_ids"]), cfg=SplitConfig())


# ---------------------------------------------------------------- by donor
def test_by_donor_keeps_donors_apart():
    train, test, summary = split_puzzles(RICH, cfg=SplitConfig(by="donor", test_fraction=0.2, max_test=None))
    assert not donor_set(train) & donor_set(test)
    assert summary.test_donors == 1 and summary.train_donors == 3
    assert len(train) + len(test) == len(RICH)
    assert summary.dropped_for_leakage == 0 and summary.dropped_over_cap == 0


def test_by_donor_cap_is_stratified_and_counted():
    train, test, summary = split_puzzles(RICH, cfg=SplitConfig(by="donor", test_fraction=0.3, max_test=8))
    assert len(test) == 8
    assert summary.test_by_n == {3: 2, 4: 2, 5: 2, 6: 2}
    assert not donor_set(train) & donor_set(test)
    assert summary.dropped_over_cap == len(RICH) - len(train) - len(test) > 0


def test_by_donor_needs_two_donors():
    with pytest.raises(InputError) as exc:
        split_puzzles(SCARCE, cfg=SplitConfig(by="donor"))
    assert "at least 2 donors" in str(exc.value) and "--by cell" in str(exc.value)


# ---------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), seed=st.integers(0, 1000),
       fraction=st.floats(0.05, 0.6), cap=st.one_of(st.none(), st.integers(1, 30)),
       by=st.sampled_from(["cell", "donor"]))
def test_split_never_leaks(sizes, seed, fraction, cap, by):
    puzzles = make_puzzles({("ds", f"d{i}"): s for i, s in enumerate(sizes)}, per_n=4, seed=seed, types=4)
    try:
        train, test, summary = split_puzzles(puzzles, cfg=SplitConfig(by=by, test_fraction=fraction, max_test=cap, seed=seed))
    except InputError as exc:  # tiny tables may not split; that must be said, not written
        assert "would be empty" in str(exc) or "at least 2 donors" in str(exc)
        return
    assert not cell_set(train) & cell_set(test)
    if by == "donor":
        assert not donor_set(train) & donor_set(test)
    if cap is not None:
        assert len(test) <= cap
    assert summary.test_total == len(test) and summary.train_total == len(train)
    assert len(train) + len(test) + summary.dropped_for_leakage + summary.dropped_over_cap == len(puzzles)


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
    published = audit_paths(tmp_path / "pub" / "train.jsonl", tmp_path / "pub" / "test.jsonl", template=PromptTemplate())
    assert published.test_sharing_identical_cell == 3
    assert published.shared_gene_lists == 3
    mixed = audit_paths(tmp_path / "train.parquet", tmp_path / "pub" / "test.jsonl", template=PromptTemplate())
    assert mixed.test_sharing_identical_cell == 3 and mixed.test_sharing_cell_id == 0
    with pytest.raises(InputError, match="unknown file type"):
        audit_paths(tmp_path / "train.csv", tmp_path / "test.parquet", template=PromptTemplate())


# ---------------------------------------------------------------- files
def test_make_split_writes_one_directory(tmp_path):
    src = tmp_path / "puzzles.parquet"
    RICH.to_parquet(src)
    out = tmp_path / "splits"
    summary = make_split(src, out, cfg=SplitConfig(max_test=12))
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "test.parquet", "train.parquet"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary.to_dict()))
    assert saved["test_total"] == len(pd.read_parquet(out / "test.parquet")) == 12
    train, test, _ = split_puzzles(RICH, cfg=SplitConfig(max_test=12))
    assert pd.read_parquet(out / "train.parquet")["puzzle_id"].tolist() == key(train)
    # A failed split leaves the earlier output as it was and no temporary directory.
    SCARCE.to_parquet(tmp_path / "one_donor.parquet")
    with pytest.raises(InputError, match="2 donors"):
        make_split(tmp_path / "one_donor.parquet", out, cfg=SplitConfig(by="donor"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one_donor.parquet", "puzzles.parquet", "splits"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "test.parquet", "train.parquet"]
    with pytest.raises(InputError, match="no such file"):
        make_split(tmp_path / "absent.parquet", out, cfg=SplitConfig())


def test_cli_split_and_audit(tmp_path, capsys):
    from cello.cli import main

    src = tmp_path / "puzzles.parquet"
    RICH.to_parquet(src)
    none = defaults_params(tmp_path)
    assert main(["data", "split", str(src), "-o", str(tmp_path / "splits"), "--max-test", "8", "--params", none]) == 0
    assert "split by cell" in capsys.readouterr().out
    args = ["data", "audit", str(tmp_path / "splits" / "train.parquet"), str(tmp_path / "splits" / "test.parquet")]
    assert main([*args, "-o", str(tmp_path / "audit.json"), "--params", none]) == 0
    assert "identical cell" in capsys.readouterr().out
    assert json.loads((tmp_path / "audit.json").read_text())["test_puzzles"] == 8
    assert main(["data", "split", str(src), "-o", str(tmp_path / "s2"), "--by", "donor", "--params", none]) == 0
    SCARCE.to_parquet(tmp_path / "one.parquet")
    assert main(["data", "split", str(tmp_path / "one.parquet"), "-o", str(tmp_path / "s3"), "--by", "donor", "--params", none]) == 2
    assert "at least 2 donors" in capsys.readouterr().err
