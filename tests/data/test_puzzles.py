"""Tests for cello.data.puzzles: sampling rules, determinism, errors, file output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cello.config import PuzzlesConfig
from cello.data.puzzles import build_puzzles, make_puzzles, unique_id
from cello.data.schema import PUZZLE_COLUMNS
from cello.errors import InputError
from tests.conftest import defaults_params


def make_cells(spec: dict[tuple[str, str, str], dict[str, int]]) -> pd.DataFrame:
    """Cells from {(dataset, donor, batch): {cell_type: n_cells}}; genes encode the cell."""
    rows = []
    for (ds, donor, batch), types in spec.items():
        for ctype, count in types.items():
            for i in range(count):
                cid = f"{ds}:{donor}:{batch}:{ctype}:{i}"
                rows.append({
                    "cell_id": cid, "dataset": ds, "donor_id": donor, "batch": batch,
                    "cell_type": ctype, "top_genes": [f"{ctype}_MARK", f"G{i}", cid],
                    "context": f"context of {donor}",
                })
    return pd.DataFrame(rows)


def cfg(**kw) -> PuzzlesConfig:
    return PuzzlesConfig(**{"min_n": 3, "max_n": 5, "per_n": 4, "seed": 0, **kw})


BIG = make_cells({
    ("ds1", "d1", ""): {f"T{t}": 6 for t in range(6)},
    ("ds1", "d2", ""): {f"T{t}": 6 for t in range(4)},
    ("ds1", "d3", ""): {"T0": 5, "T1": 5},
    ("ds2", "e1", "b1"): {f"U{t}": 4 for t in range(5)},
    ("ds2", "e1", "b2"): {f"U{t}": 4 for t in range(5)},
})


def plain(value):
    """Parquet/pandas list cells (numpy arrays) as plain lists, recursively."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    return value


def records(df: pd.DataFrame) -> list[dict]:
    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def check_invariants(puzzles: pd.DataFrame, cells: pd.DataFrame) -> None:
    by_id = cells.set_index("cell_id")
    for row in puzzles.itertuples():
        assert list(puzzles.columns) == PUZZLE_COLUMNS
        assert len(row.cell_ids) == len(row.answer) == len(row.cell_genes) == row.n
        assert len(set(row.answer)) == row.n  # distinct types
        assert list(row.candidates) == sorted(row.candidates)
        assert sorted(row.answer) == list(row.candidates)  # answer is a permutation
        assert len(set(row.cell_ids)) == row.n
        for cid, ctype, genes in zip(row.cell_ids, row.answer, row.cell_genes, strict=True):
            cell = by_id.loc[cid]
            assert cell["cell_type"] == ctype
            assert list(genes) == list(cell["top_genes"])
            assert cell["dataset"] == row.dataset
            group = cell["donor_id"] + (f"/{cell['batch']}" if cell["batch"] else "")
            assert group == row.group  # every cell from the puzzle's group
            assert cell["donor_id"] == row.donor_id
    assert puzzles["puzzle_id"].is_unique


def test_quota_per_n_and_dataset():
    puzzles, summary = build_puzzles(BIG, cfg=cfg(min_n=3, max_n=6, per_n=4))
    check_invariants(puzzles, BIG)
    counts = puzzles.groupby(["dataset", "n"]).size().to_dict()
    assert counts == {("ds1", 3): 4, ("ds1", 4): 4, ("ds1", 5): 4, ("ds1", 6): 4,
                      ("ds2", 3): 4, ("ds2", 4): 4, ("ds2", 5): 4}
    assert summary.by_n == {3: 8, 4: 8, 5: 8, 6: 4}
    assert summary.by_dataset == {"ds1": 16, "ds2": 12}
    assert summary.total == 28
    assert summary.missing_n == {"ds2": [6]}
    assert summary.groups_total == 5
    assert summary.skipped_groups == [{"dataset": "ds1", "group": "d3", "n_types": 2}]
    assert summary.groups_skipped == 1
    assert summary.max_types == 6
    # N=6 only fits d1; N=5 fits d1 in ds1 and both batches in ds2.
    assert set(puzzles.loc[puzzles.n == 6, "group"]) == {"d1"}
    assert set(puzzles.loc[puzzles.dataset == "ds2", "group"]) <= {"e1/b1", "e1/b2"}
    text = summary.render()
    assert "28" in text and "d3" in text and "N = 6" in text
    assert summary.to_dict()["by_n"] == {"3": 8, "4": 8, "5": 8, "6": 4}


def test_same_seed_same_output_other_seed_differs():
    a, _ = build_puzzles(BIG, cfg=cfg(seed=7))
    b, _ = build_puzzles(BIG.sample(frac=1.0, random_state=3), cfg=cfg(seed=7))  # row order too
    c, _ = build_puzzles(BIG, cfg=cfg(seed=8))
    assert records(a) == records(b)
    assert records(a) != records(c)


def test_no_repeated_cell_sets_when_group_allows():
    cells = make_cells({("ds", "d", ""): {f"T{t}": 3 for t in range(4)}})
    # 4 types x 3 cells: C(4,3) * 27 = 108 distinct 3-cell sets, 60 puzzles fit easily.
    puzzles, summary = build_puzzles(cells, cfg=cfg(min_n=3, max_n=3, per_n=60))
    sets = {frozenset(ids) for ids in puzzles["cell_ids"]}
    assert len(sets) == 60
    assert summary.repeated_cell_sets == 0


def test_repeats_counted_when_unavoidable():
    cells = make_cells({("ds", "d", ""): {"A": 1, "B": 1, "C": 1}})
    puzzles, summary = build_puzzles(cells, cfg=cfg(min_n=3, max_n=3, per_n=3))
    assert len(puzzles) == 3
    assert summary.repeated_cell_sets == 2
    assert "repeat" in summary.render()


def test_context_is_most_common_of_chosen_cells():
    cells = make_cells({("ds", "d", ""): {"A": 1, "B": 1, "C": 1}})
    cells["context"] = ["ctx one", "ctx two", "ctx two"]
    puzzles, _ = build_puzzles(cells, cfg=cfg(min_n=3, max_n=3, per_n=1))
    assert puzzles["context"].tolist() == ["ctx two"]


def test_batch_and_context_optional_and_missing_donor_is_unknown():
    cells = make_cells({("ds", "d", ""): {"A": 2, "B": 2, "C": 2}}).drop(columns=["batch", "context"])
    cells["donor_id"] = None
    puzzles, _ = build_puzzles(cells, cfg=cfg(min_n=3, max_n=3, per_n=2))
    assert set(puzzles["group"]) == {"unknown"}
    assert set(puzzles["context"]) == {""}
    assert puzzles["puzzle_id"].tolist() == ["ds-unknown-n3-0", "ds-unknown-n3-1"]


def test_unlabelled_cells_are_left_out():
    cells = make_cells({("ds", "d", ""): {"A": 2, "B": 2, "C": 2, "unknown": 3}})
    cells.loc[0, "cell_type"] = None
    puzzles, summary = build_puzzles(cells, cfg=cfg(min_n=3, max_n=4, per_n=3))
    assert summary.unlabelled_cells == 4
    assert set(puzzles["n"]) == {3}
    assert all("unknown" not in a for a in puzzles["answer"])


def test_puzzle_ids_are_sanitized_and_unique():
    cells = make_cells({("my data", "donor #1", "b/2"): {"A": 2, "B": 2, "C": 2}})
    puzzles, _ = build_puzzles(cells, cfg=cfg(min_n=3, max_n=3, per_n=2))
    assert puzzles["puzzle_id"].tolist() == ["my_data-donor_1_b_2-n3-0", "my_data-donor_1_b_2-n3-1"]
    assert puzzles["group"].tolist() == ["donor #1/b/2"] * 2


def test_unique_id_numbers_repeats_from_two():
    taken: set[str] = set()
    assert [unique_id(b, taken) for b in ("p", "p", "q", "p", "p-2")] == ["p", "p-2", "q", "p-3", "p-2-2"]
    assert taken == {"p", "p-2", "q", "p-3", "p-2-2"}


def test_missing_column_is_named():
    with pytest.raises(InputError, match="cell_type"):
        build_puzzles(BIG.drop(columns=["cell_type"]), cfg=cfg())


def test_too_few_types_names_largest_and_fix():
    cells = make_cells({("ds", "d1", ""): {"A": 3, "B": 3}, ("ds", "d2", ""): {"A": 1, "B": 1, "C": 1}})
    with pytest.raises(InputError) as exc:
        build_puzzles(cells, cfg=cfg(min_n=4, max_n=6), source="cells.parquet")
    text = str(exc.value)
    assert "cells.parquet" in text and "is 3" in text and "'d2'" in text
    assert "--min-n" in text and "--donor-key" in text


def test_make_puzzles_writes_parquet_atomically(tmp_path):
    src = tmp_path / "cells.parquet"
    BIG.to_parquet(src)
    out = tmp_path / "out" / "puzzles.parquet"
    summary = make_puzzles(src, out, cfg=cfg())
    back = pd.read_parquet(out)
    expected, _ = build_puzzles(BIG, cfg=cfg())
    assert records(back) == records(expected)
    assert summary.total == len(back)
    assert back["n"].dtype == "int64"
    assert sorted(p.name for p in out.parent.iterdir()) == ["puzzles.parquet"]


def test_make_puzzles_bad_inputs_leave_no_output(tmp_path):
    out = tmp_path / "puzzles.parquet"
    with pytest.raises(InputError, match="no such file"):
        make_puzzles(tmp_path / "absent.parquet", out, cfg=cfg())
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(InputError, match="not a readable Parquet"):
        make_puzzles(bad, out, cfg=cfg())
    nodonor = tmp_path / "nodonor.parquet"
    BIG.drop(columns=["donor_id"]).to_parquet(nodonor)
    with pytest.raises(InputError, match="donor_id"):
        make_puzzles(nodonor, out, cfg=cfg())
    src = tmp_path / "cells.parquet"
    BIG.to_parquet(src)
    with pytest.raises(InputError):
        make_puzzles(src, out, cfg=cfg(min_n=7, max_n=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "cells.parquet", "nodonor.parquet"]


# ---------------------------------------------------------------- properties
@st.composite
def cell_tables(draw):
    spec = {}
    for d in range(draw(st.integers(1, 3))):
        ds = draw(st.sampled_from(["a", "b"]))
        batch = draw(st.sampled_from(["", "x", "y"]))
        n_types = draw(st.integers(1, 7))
        spec[(ds, f"d{d}", batch)] = {f"T{t}": draw(st.integers(1, 3)) for t in range(n_types)}
    return make_cells(spec)


@settings(max_examples=60, deadline=None)
@given(cells=cell_tables(), min_n=st.integers(2, 4), extra=st.integers(0, 3),
       per_n=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_properties(cells, min_n, extra, per_n, seed):
    config = cfg(min_n=min_n, max_n=min_n + extra, per_n=per_n, seed=seed)
    groups = cells.assign(g=cells.donor_id + "/" + cells.batch).groupby(["dataset", "g"])
    types_per_group = groups["cell_type"].nunique()
    if types_per_group.max() < min_n:
        with pytest.raises(InputError):
            build_puzzles(cells, cfg=config)
        return
    puzzles, summary = build_puzzles(cells, cfg=config)
    check_invariants(puzzles, cells)
    assert summary.total == len(puzzles)
    for (ds, n), count in puzzles.groupby(["dataset", "n"]).size().items():
        assert count == per_n
        assert types_per_group.loc[ds].max() >= n
    again, _ = build_puzzles(cells, cfg=config)
    assert records(again) == records(puzzles)


def test_cli_puzzles(tmp_path, capsys):
    from cello.cli import main

    src = tmp_path / "cells.parquet"
    BIG.to_parquet(src)
    none = defaults_params(tmp_path)
    out = tmp_path / "p.parquet"
    argv = ["data", "puzzles", str(src), "-o", str(out), "--min-n", "3", "--max-n", "4", "--per-n", "2"]
    assert main([*argv, "--params", none]) == 0
    assert "puzzles: 8 from 2 dataset(s)" in capsys.readouterr().out
    assert main(["data", "puzzles", str(src), "-o", str(out), "--min-n", "9", "--max-n", "9", "--params", none]) == 2
    assert "--min-n" in capsys.readouterr().err
