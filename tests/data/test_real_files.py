"""The shared real .h5ad files through cells -> puzzles, and cells -> split (skipped when absent)."""

from __future__ import annotations

import pandas as pd
import pytest

from cello.cli import main
from tests.conftest import defaults_params

CASES = [
    # file, extra `data cells` flags, N range, donors, types per donor
    ("kang2018_pbmc_3donors_8celltypes_100genes.h5ad", [], (8, 8), 3, 8),
    ("kang2018_pbmc_5donors_4celltypes_2511genes.h5ad", [], (3, 4), 5, 4),
    ("baron2016_pancreas_4donors_5celltypes.h5ad", [], (3, 5), 4, 5),
    # Curator-stage CELLxGENE file: only ontology ids, Ensembl var_names, X normalised.
    ("cxg_lattice_liver_bcells_4donors.h5ad",
     ["--cell-type-key", "cell_type_ontology_term_id", "--keep-suspension", "none"], (2, 2), 4, 2),
]


@pytest.mark.parametrize(
    ("name", "flags", "n_range", "donors", "types"), CASES, ids=[c[0].split("_")[0] for c in CASES]
)
def test_real_file_to_split(shared_data, tmp_path, name, flags, n_range, donors, types):
    path = shared_data / name
    if not path.exists():
        pytest.skip(f"{name} absent")
    cells, puzzles, splits = tmp_path / "cells.parquet", tmp_path / "puzzles.parquet", tmp_path / "splits"
    assert main(["data", "cells", str(path), "-o", str(cells), "--params", defaults_params(tmp_path), *flags]) == 0
    df = pd.read_parquet(cells)
    assert df.donor_id.nunique() == donors
    assert df.groupby("donor_id").cell_type.nunique().min() == types
    assert main(["data", "puzzles", str(cells), "-o", str(puzzles), "--min-n", str(n_range[0]),
                 "--max-n", str(n_range[1]), "--per-n", "20", "--params", defaults_params(tmp_path)]) == 0
    pz = pd.read_parquet(puzzles)
    assert set(pz.n) == set(range(n_range[0], n_range[1] + 1))
    assert all(len(set(a)) == n for a, n in zip(pz.answer, pz.n, strict=True))
    n_flags = ["--min-n", str(n_range[0]), "--max-n", str(n_range[1]), "--per-n", "20"]
    assert main(["data", "split", str(cells), "-o", str(splits), "--test-fraction", "0.2", "--test-size", "10",
                 *n_flags, "--params", defaults_params(tmp_path)]) == 0
    train, test = pd.read_parquet(splits / "train.parquet"), pd.read_parquet(splits / "test.parquet")
    assert len(train) and len(test) == 10
    assert not set(c for ids in train.cell_ids for c in ids) & set(c for ids in test.cell_ids for c in ids)
    # Holding out one whole donor is one flag; its puzzles use its cells only.
    donor = str(df.donor_id.iloc[0])
    held = tmp_path / "held"
    assert main(["data", "split", str(cells), "-o", str(held), "--test-donors", donor, "--test-size", "10",
                 *n_flags, "--params", defaults_params(tmp_path)]) == 0
    train, test = pd.read_parquet(held / "train.parquet"), pd.read_parquet(held / "test.parquet")
    assert set(test.donor_id) == {donor} and donor not in set(train.donor_id) and len(test) == 10


def test_too_few_types_is_a_clear_error(shared_data, tmp_path, capsys):
    path = shared_data / "kang2018_pbmc_5donors_4celltypes_2511genes.h5ad"
    if not path.exists():
        pytest.skip("file absent")
    cells = tmp_path / "cells.parquet"
    assert main(["data", "cells", str(path), "-o", str(cells), "--params", defaults_params(tmp_path)]) == 0
    assert main(["data", "puzzles", str(cells), "-o", str(tmp_path / "p.parquet"), "--min-n", "8",
                 "--params", defaults_params(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "min" in err and str(cells) in err
    assert not (tmp_path / "p.parquet").exists()
