"""cello.data.cells / topgenes / context / sources: h5ad -> cells.parquet."""

from __future__ import annotations

import gc
import warnings
from functools import partial

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cello.cli import main
from cello.config import CellsConfig
from cello.data.cells import make_cells, strip_ensembl
from cello.data.context import clean, clean_categorical, context_columns, sentence, sentences
from cello.data.topgenes import pad_unexpressed, top_genes, top_genes_reference
from cello.errors import InputError
from tests.conftest import defaults_params, make_adata

# The numpy path and the compiled kernel (cello.data._kernels) must give the same output.
BOTH_PATHS = pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])


def _write(adata, path):
    adata.write_h5ad(path)
    return str(path)


# ------------------------------------------------------------------ ranking
@BOTH_PATHS
def test_top_genes_literal_matrix_with_ties(compiled):
    rank = partial(top_genes, compiled=compiled)
    x = np.array(
        [
            [0, 5, 5, 1, 0],  # tie 5/5: lower gene index first
            [0, 0, 0, 0, 0],  # nothing expressed
            [2, 0, 0, 0, 3],
        ],
        dtype=np.float32,
    )
    got = rank(x, 3)
    assert got.tolist() == [[1, 2, 3], [-1, -1, -1], [4, 0, -1]]
    assert (rank(sp.csr_matrix(x), 3) == got).all()
    assert (rank(sp.csc_matrix(x), 3) == got).all()


@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
@BOTH_PATHS
def test_top_genes_matches_per_cell_reference(density, compiled):
    rank = partial(top_genes, compiled=compiled)
    rng = np.random.default_rng(1)
    x = sp.random(150, 400, density=density, format="csr", random_state=2, dtype=np.float32)
    x.data = np.round(x.data * 4)  # many ties and explicit zeros
    dense = x.toarray()
    for top_n in (1, 10, 50):
        got = rank(x, top_n)
        for i in rng.choice(150, 40, replace=False):
            assert [g for g in got[i] if g >= 0] == top_genes_reference(dense[i], top_n)
        assert (rank(dense, top_n) == got).all()


@BOTH_PATHS
def test_long_rows_with_every_kind_of_value_match_the_reference(compiled):
    """Rows far longer than 2N go through the coarse pre-filter first: it must never drop a
    value of the top N, whatever the signs, ties, zeros, NaN or inf in the row."""
    rank = partial(top_genes, compiled=compiled)
    rng = np.random.default_rng(4)
    x = sp.random(60, 3000, density=0.3, format="csr", random_state=5, dtype=np.float32)
    x.data = np.round(rng.normal(0, 3, x.nnz)).astype(np.float32)  # signs, many ties, explicit zeros
    x.data[rng.choice(x.nnz, 50, replace=False)] = rng.choice([np.nan, np.inf, -np.inf, 1e30, -1e-30], 50)
    x.data[: x.indptr[1]] = 7.0  # one row all ties
    dense = x.toarray()
    for top_n in (1, 5, 50):
        got = rank(x, top_n)
        assert [[g for g in row if g >= 0] for row in got.tolist()] == [top_genes_reference(r, top_n) for r in dense]


def test_compiled_kernel_takes_the_whole_row_when_its_sample_misses_the_top_n():
    """The compiled kernel first keeps the values at or above a threshold taken from a strided
    sample of the row. Here the sampled positions hold the row's largest values and every other
    value is just below them, so fewer than N values reach the sample's threshold: the row must be
    ranked whole, not cut short."""
    top_n, step = 20, 3  # the kernel samples every 3rd value for N=20 (16 sampled values kept)
    row = np.full(120, 5.0, dtype=np.float32)
    row[::step] = 10.0 + np.arange(len(row[::step]), dtype=np.float32)
    x = sp.csr_matrix(np.vstack([row, row[::-1], np.roll(row, 1)]))
    got = top_genes(x, top_n, compiled=True)
    assert [[g for g in r if g >= 0] for r in got.tolist()] == [top_genes_reference(r, top_n) for r in x.toarray()]
    assert (got == top_genes(x, top_n)).all()


@BOTH_PATHS
def test_a_gene_stored_twice_in_a_row_is_listed_once_with_its_values_summed(compiled):
    """A CSR row may store one gene twice (anndata does not forbid it); it is one gene whose value
    is the sum, as `toarray` reads it, never listed twice."""
    x = sp.csr_matrix(
        (np.array([1, 2, 5, 3, 5, 1, 7], dtype=np.float32), np.array([0, 1, 2, 1, 2, 3, 4]), np.array([0, 7])),
        shape=(1, 6),
    )
    assert not x.has_canonical_format
    got = top_genes(x, 3, compiled=compiled)
    assert got.tolist() == [[2, 4, 1]] == [top_genes_reference(x.toarray()[0], 3)]


@BOTH_PATHS
def test_rows_stored_out_of_order_or_twice_rank_as_toarray_reads_them(compiled):
    """The kernel checks each row's gene order as it ranks: from the first row stored out of
    order (or with a gene twice) on, it ranks the canonical form; rows before it stay as ranked."""
    rng = np.random.default_rng(11)
    x = sp.random(40, 3000, density=0.3, format="csr", random_state=3, dtype=np.float32)
    x.data = rng.integers(1, 6, x.nnz).astype(np.float32)  # ties
    for row in (7, 30):  # shuffle two rows' stored order; give row 30 a gene twice
        lo, hi = x.indptr[row], x.indptr[row + 1]
        order = rng.permutation(hi - lo)
        x.indices[lo:hi], x.data[lo:hi] = x.indices[lo:hi][order], x.data[lo:hi][order]
    x.indices[x.indptr[30]] = x.indices[x.indptr[30] + 1]
    x = sp.csr_matrix((x.data, x.indices, x.indptr), shape=x.shape)  # its format flags found anew
    assert not x.has_canonical_format
    dense = x.toarray()
    got = top_genes(x, 50, compiled=compiled)
    assert [[g for g in row if g >= 0] for row in got.tolist()] == [top_genes_reference(r, 50) for r in dense]


@BOTH_PATHS
def test_negative_values_rank_below_positive(compiled):
    rank = partial(top_genes, compiled=compiled)
    x = np.array([[-1.0, 0.5, -0.2, 2.0]], dtype=np.float32)
    assert rank(x, 4).tolist() == [[3, 1, 2, 0]]


def test_strip_ensembl_suffix():
    names = np.array(["CD3E_ENSG00000198851", "MT-CO1", "HLA-DRA|ENSG00000204287.14", "ENSG00000000003"])
    assert strip_ensembl(names).tolist() == ["CD3E", "MT-CO1", "HLA-DRA", "ENSG00000000003"]


# ------------------------------------------------------------------ context
def test_context_never_prints_missing_values():
    assert clean("unknown") == clean("NA") == clean(float("nan")) == clean(None) == clean(" ") == ""
    text = sentence({"sex": "female", "development_stage": "", "tissue": "lung", "disease": "normal",
                     "self_reported_ethnicity": ""})
    assert text == "The cell is from a female donor. The sample was taken from the lung. The donor is healthy."
    assert "unknown" not in sentence({"sex": "", "development_stage": "", "disease": ""})


# ------------------------------------------------------------------ files
@pytest.mark.parametrize("layout", ["csr", "csc", None])
def test_cells_from_h5ad_dense_and_sparse(tmp_path, layout):
    adata = make_adata(sparse=layout)
    path = _write(adata, tmp_path / "toy.h5ad")
    out = tmp_path / "cells.parquet"
    summary = make_cells([path], out, cfg=CellsConfig(top_n=3, chunk_size=7))
    df = pd.read_parquet(out)
    assert summary.kept == len(df) == adata.n_obs
    # Markers of type t are genes 3t..3t+2, strongest first.
    first = df.iloc[0]
    t = ord(first.cell_type[-1]) - 65
    assert list(first.top_genes) == [f"G{3 * t}", f"G{3 * t + 1}", f"G{3 * t + 2}"]
    assert df.cell_id.is_unique and df.cell_id.str.startswith("toy:").all()
    assert set(df.batch) == {""}
    assert "unknown" not in " ".join(df.context) and " na " not in " ".join(df.context)
    assert df.context.str.contains("45-year-old stage").all()


def test_same_output_for_every_layout_and_chunk_size(tmp_path):
    frames = []
    for i, (layout, chunk) in enumerate([("csr", 5), ("csc", 64), (None, 13)]):
        path = _write(make_adata(sparse=layout, seed=3), tmp_path / f"toy{i}.h5ad")
        make_cells([path], tmp_path / f"c{i}.parquet", cfg=CellsConfig(top_n=20, chunk_size=chunk))
        frames.append(pd.read_parquet(tmp_path / f"c{i}.parquet"))
    for other in frames[1:]:
        assert [list(g) for g in other.top_genes] == [list(g) for g in frames[0].top_genes]


def test_a_failed_write_is_raised_and_leaves_nothing(tmp_path, monkeypatch):
    """Chunks are written by their own thread while the next ones are read and ranked: a write
    that fails (disk full) still stops the stage with its error, and no output is left."""
    import pyarrow.parquet as pq

    import cello.data.cells as cells_mod

    path = _write(make_adata(sparse="csr", seed=3), tmp_path / "toy.h5ad")
    real_write, calls = pq.ParquetWriter.write_table, []

    def failing_write(self, table, *args, **kwargs):
        calls.append(table.num_rows)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_write(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing_write)
    monkeypatch.setattr(cells_mod, "ROW_GROUP_CELLS", 4)  # a row group (a write) per chunk
    out = tmp_path / "cells.parquet"
    with pytest.raises(OSError, match="No space left"):
        make_cells([path], out, cfg=CellsConfig(top_n=5, chunk_size=4, threads=2))
    assert 3 <= len(calls) < 15 and not out.exists()  # stopped early (15 chunks in the file)
    assert [p.name for p in tmp_path.iterdir()] == ["toy.h5ad"]


def test_large_files_rank_with_the_compiled_kernel_and_the_same_output(tmp_path, monkeypatch):
    """From COMPILED_FROM_CELLS cells on, the stage ranks with the compiled kernel; the output
    does not change. Where the kernel cannot load, the stage says so and ranks with numpy."""
    import sys

    import cello.data.cells as cells_mod
    import cello.data.topgenes as topgenes

    path = _write(make_adata(sparse="csr", seed=3), tmp_path / "toy.h5ad")
    cfg = CellsConfig(top_n=20, chunk_size=4)
    make_cells([path], tmp_path / "numpy.parquet", cfg=cfg)
    monkeypatch.setattr(cells_mod, "COMPILED_FROM_CELLS", 1)
    make_cells([path], tmp_path / "compiled.parquet", cfg=cfg)
    assert topgenes._compiled_kernels() is not None
    topgenes._compiled_kernels.cache_clear()
    monkeypatch.setitem(sys.modules, "cello.data._kernels", None)  # as if numba could not be imported
    monkeypatch.delattr(sys.modules["cello.data"], "_kernels")
    try:
        make_cells([path], tmp_path / "fallback.parquet", cfg=cfg)
        assert topgenes._compiled_kernels() is None
    finally:
        topgenes._compiled_kernels.cache_clear()
    frames = [pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("numpy", "compiled", "fallback")]
    for other in frames[1:]:
        pd.testing.assert_frame_equal(other, frames[0])


def test_ranking_kernel_compiles_where_it_cannot_be_cached():
    """Code numba cannot cache (here: no source file; in a container: no writable cache
    directory) is compiled in memory instead of failing."""
    from cello.data._kernels import _jit

    namespace: dict = {}
    exec("def double(x):\n    return 2 * x\n", namespace)  # no file: numba has no cache locator
    assert _jit(namespace["double"])(21) == 42


def test_batch_column_and_ensembl_names(tmp_path):
    path = _write(make_adata(with_batch=True, ensembl_suffix=True), tmp_path / "b.h5ad")
    make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3, batch_key="batch"))
    df = pd.read_parquet(tmp_path / "c.parquet")
    assert set(df.batch) == {"b1", "b2"}
    assert all(not g.startswith("ENSG") and "_" not in g for genes in df.top_genes for g in genes)


def test_suspension_filter_and_subsample(tmp_path):
    adata = make_adata(n_cells=40)
    adata.obs["suspension_type"] = np.where(np.arange(40) < 10, "nucleus", "cell")
    path = _write(adata, tmp_path / "s.h5ad")
    summary = make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3))
    assert summary.kept == 30 and summary.files[0].dropped_suspension == 10
    a = make_cells([path], tmp_path / "a.parquet", cfg=CellsConfig(top_n=3, max_cells=12, seed=5))
    make_cells([path], tmp_path / "b.parquet", cfg=CellsConfig(top_n=3, max_cells=12, seed=5))
    assert a.kept == 12
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    assert a.cell_id.tolist() == b.cell_id.tolist()


def test_directory_input_in_parallel(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    _write(make_adata(seed=1), tmp_path / "in" / "one.h5ad")
    _write(make_adata(seed=2), tmp_path / "in" / "sub" / "two.h5ad")
    summary = make_cells([str(tmp_path / "in")], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3, workers=2))
    df = pd.read_parquet(tmp_path / "c.parquet")
    assert summary.kept == 120 and set(df.dataset) == {"one", "two"}


def test_builtin_pbmc68k():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        summary = make_cells(["builtin:pbmc68k"], Path(tmp) / "c.parquet", cfg=CellsConfig())
        df = pd.read_parquet(Path(tmp) / "c.parquet")
    assert summary.kept == 700 and df.cell_type.nunique() == 10 and df.donor_id.nunique() == 1
    assert all(len(g) == 50 for g in df.top_genes)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("mutate", "flags", "needle"),
    [
        (lambda a: a.obs.drop(columns="cell_type", inplace=True), [], "cell_type"),
        (lambda a: a.obs.drop(columns="donor_id", inplace=True), [], "donor_id"),
        (lambda a: None, ["--gene-symbols", "symbol"], "symbol"),
        (lambda a: None, ["--top-n", "500"], "top_n=500"),
        (lambda a: None, ["--batch-key", "lane"], "lane"),
        (lambda a: None, ["--matrix", "counts"], "counts"),
        (lambda a: a.obs.__setitem__("suspension_type", "nucleus"), [], "no cells left"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path, capsys, mutate, flags, needle):
    adata = make_adata()
    mutate(adata)
    path = _write(adata, tmp_path / "bad.h5ad")
    out = tmp_path / "out" / "cells.parquet"
    assert main(["data", "cells", path, "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err.replace("\n", " ")
    assert not out.exists() and not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_only_the_obs_columns_the_stage_uses_are_read(tmp_path):
    """CELLxGENE files carry dozens of obs columns the stage never uses (a per-cell join id,
    ontology ids, QC metrics): only the label, filter and context columns are read, the cells
    are the same, and a missing key's error still names candidates from the whole file."""
    from cello.data.sources import open_h5ad

    adata = make_adata(n_cells=90, seed=4)
    adata.obs["observation_joinid"] = [f"j{i:06d}" for i in range(adata.n_obs)]
    adata.obs["n_counts"] = np.arange(adata.n_obs, dtype=np.float32)
    adata.obs["author_cell_type"] = adata.obs["cell_type"].astype(str)
    path = _write(adata, tmp_path / "wide.h5ad")
    plain = _write(make_adata(n_cells=90, seed=4), tmp_path / "plain.h5ad")
    with open_h5ad(path, obs_columns={"cell_type", "donor_id", "sex", "not_in_file"}) as (_, obs, _, _):
        assert list(obs.columns) == ["cell_type", "donor_id", "sex"]
        assert list(obs.index) == list(adata.obs_names)
        assert obs.attrs["columns_in_file"] == list(adata.obs.columns)
        pd.testing.assert_series_equal(obs["cell_type"], adata.obs["cell_type"], check_index=False)
    frames = []
    for name, src in (("wide", path), ("plain", plain)):
        make_cells([src], tmp_path / f"{name}.parquet", cfg=CellsConfig(top_n=10))
        frames.append(pd.read_parquet(tmp_path / f"{name}.parquet").drop(columns=["cell_id", "dataset"]))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    with pytest.raises(InputError, match="author_cell_type"):
        make_cells([path], tmp_path / "x.parquet", cfg=CellsConfig(top_n=10, cell_type_key="celltype"))


def test_missing_corrupt_and_non_h5ad_files(tmp_path, capsys):
    (tmp_path / "broken.h5ad").write_bytes(b"this is not hdf5")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    for path, needle in [
        (tmp_path / "absent.h5ad", "no such file"),
        (tmp_path / "broken.h5ad", "corrupt"),
        (tmp_path / "table.csv", "not an .h5ad"),
        (tmp_path, "no .h5ad"),
    ]:
        if path == tmp_path:
            (tmp_path / "broken.h5ad").unlink()
        assert main(["data", "cells", str(path), "-o", str(tmp_path / "c.parquet")]) == 2
        assert needle in capsys.readouterr().err.replace("\n", " ")
        assert not (tmp_path / "c.parquet").exists()


def test_unknown_builtin_is_an_error():
    with pytest.raises(InputError, match="builtin:pbmc68k"):
        make_cells(["builtin:nope"], "/nonexistent/never-written.parquet", cfg=CellsConfig())


# ------------------------------------------------------------------ real data
def test_shared_real_files(shared_data, tmp_path):
    kang = shared_data / "kang2018_pbmc_3donors_8celltypes_100genes.h5ad"
    if not kang.exists():
        pytest.skip("Kang 2018 file absent")
    make_cells([str(kang)], tmp_path / "c.parquet", cfg=CellsConfig(top_n=50))
    df = pd.read_parquet(tmp_path / "c.parquet")
    assert df.donor_id.nunique() == 3
    assert df.groupby("donor_id").cell_type.nunique().tolist() == [8, 8, 8]
    assert "systemic lupus erythematosus" in df.context.iloc[0]


# ------------------------------------------------------------------ review regressions
def test_clean_categorical_is_clean_per_value_whatever_the_dtype():
    values = ["T cell", " B cell ", "unknown", None, float("nan"), "NA", "T cell"]
    expected = ["T cell", "B cell", "", "", "", "", "T cell"]
    for col in (pd.Series(values, dtype=object), pd.Series(values, dtype="category")):
        out = clean_categorical(col)
        assert list(out) == expected and sorted(out.categories) == ["", "B cell", "T cell"]  # "" merged once
    assert list(clean_categorical(pd.Series([30.0, 2.5, None]))) == ["30", "2.5", ""]


def test_sentences_per_combination_equal_the_sentence_of_each_cell():
    """`sentences` builds one sentence per distinct combination of the fields (found from the
    categories' codes): each cell must still get exactly `sentence` of its own cleaned fields,
    whatever mix of categoricals, plain and numeric columns, placeholders and missing values,
    and when two combinations read alike ("normal" and "Normal" both say healthy)."""
    rng = np.random.default_rng(3)
    n = 500
    obs = pd.DataFrame(
        {
            "sex": pd.Categorical(rng.choice(["female", "male", "unknown", None], n)),
            "development_stage": pd.Series(rng.choice(["40-year-old stage", "na", "adult stage"], n), dtype=object),
            "tissue": pd.Categorical(rng.choice(["lung", " lung", "blood"], n)),
            "disease": pd.Categorical(rng.choice(["normal", "Normal", "COVID-19", "unspecified"], n)),
            "age": rng.choice([30.0, 45.0, np.nan], n),
        }
    )
    ctx = context_columns(obs, ["sex", "development_stage", "tissue", "disease"], ["age"])
    got = sentences(ctx, extra=["age"])
    expected = [
        sentence({name: clean(obs[name].iloc[i]) for name in obs.columns}, extra=["age"]) for i in range(n)
    ]
    assert got.astype(str).tolist() == expected
    assert isinstance(got.dtype, pd.CategoricalDtype) and len(got.cat.categories) == len(set(expected))


def test_context_handles_pandas_missing_markers_and_cellxgene_stage():
    assert clean(pd.NA) == clean(pd.NaT) == clean("<NA>") == ""
    assert clean(30.0) == "30"
    text = sentence({"sex": "male", "development_stage": "29-year-old human stage"})
    assert text == "The cell is from a male donor at the 29-year-old human stage."


def test_nullable_extra_context_column_never_prints_na(tmp_path):
    adata = make_adata(n_cells=20)
    adata.obs["smoker"] = pd.array([True, None] * 10, dtype="boolean")
    path = _write(adata, tmp_path / "na.h5ad")
    make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3, extra_context_fields=["smoker"]))
    ctx = pd.read_parquet(tmp_path / "c.parquet").context
    assert not ctx.str.contains("<NA>|NaN|nan").any()
    assert ctx.str.contains("Smoker: True.").sum() == 10


@pytest.mark.parametrize(
    ("labels", "needle"), [(["T cell", "B|plasma"], "'|'"), (["T cell", "t cell"], "differ only by case")]
)
def test_labels_the_answer_format_cannot_carry_are_rejected(tmp_path, labels, needle):
    adata = make_adata(n_cells=20)
    adata.obs["cell_type"] = pd.Categorical([labels[i % 2] for i in range(20)])
    path = _write(adata, tmp_path / "bad.h5ad")
    with pytest.raises(InputError, match=needle):
        make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3))
    assert not (tmp_path / "c.parquet").exists()


def test_duplicate_obs_names_get_unique_cell_ids(tmp_path):
    adata = make_adata(n_cells=10)
    adata.obs_names = ["same"] * 5 + [f"u{i}" for i in range(5)]
    path = _write(adata, tmp_path / "dup.h5ad")
    make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3))
    ids = pd.read_parquet(tmp_path / "c.parquet").cell_id
    assert ids.is_unique and ids.str.startswith("dup:same#").sum() == 5


def test_obs_names_read_through_arrow_equal_anndatas(tmp_path):
    """The obs names are read as numpy StringDType straight to Arrow (sources._read_names): the
    same names as AnnData's reader, whatever the characters, and cell ids from them."""
    import anndata as ad
    import h5py

    from cello.data.sources import _read_names

    adata = make_adata(n_cells=6)
    adata.obs_names = ["é≈-1", "", "a" * 300, "AAACCTG-1", "x y", "中文"]
    path = _write(adata, tmp_path / "names.h5ad")
    with h5py.File(path) as h5:
        fast, reference = _read_names(h5["obs/_index"]), ad.io.read_elem(h5["obs/_index"])
        assert list(fast) == list(reference)
    with h5py.File(tmp_path / "ascii.h5", "w") as h5:
        h5.create_dataset("names", data=np.array([b"c1", b"", b"c3"], dtype=h5py.string_dtype("ascii")))
        h5.create_dataset("fixed", data=np.array([b"c1", b"c22"], dtype="S3"))
    with h5py.File(tmp_path / "ascii.h5") as h5, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no encoding metadata: AnnData warns
        for name in ("names", "fixed"):  # read fast where HDF5 converts, else by AnnData: the same
            assert list(_read_names(h5[name])) == list(ad.io.read_elem(h5[name]))
    make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3))
    ids = pd.read_parquet(tmp_path / "c.parquet").cell_id
    assert sorted(ids) == sorted(f"names:{n}" for n in adata.obs_names)


@BOTH_PATHS
def test_nan_and_inf_are_never_ranked(compiled):
    rank = partial(top_genes, compiled=compiled)
    x = np.array([[np.nan, 1.0, np.inf, 2.0]], dtype=np.float32)
    assert rank(x, 4).tolist() == [[3, 1, -1, -1]]
    assert (rank(sp.csr_matrix(x), 4) == rank(x, 4)).all()
    assert top_genes_reference(x[0], 4) == [3, 1]


# ------------------------------------------------------------------ padded lists (the original's shape)
def test_padding_fills_with_unexpressed_genes_lowest_index_first():
    x = np.array(
        [
            [0, 5, 5, 1, 0],  # 3 expressed: nothing to pad
            [0, 0, 0, 0, 0],  # nothing expressed: the first genes
            [2, 0, np.nan, 0, 3],  # 2 expressed; NaN counts as unexpressed
        ],
        dtype=np.float32,
    )
    padded = pad_unexpressed(top_genes(x, 3), x.shape[1])
    assert padded.tolist() == [[1, 2, 3], [0, 1, 2], [4, 0, 1]]
    assert pad_unexpressed(top_genes(x, 4), 5).tolist()[2] == [4, 0, 1, 2]
    assert [top_genes_reference(row, 3, pad=True) for row in x] == padded.tolist()


def test_padding_matches_the_per_cell_reference_and_never_repeats_a_gene():
    x = sp.random(120, 300, density=0.05, format="csr", random_state=3, dtype=np.float32)
    x.data = np.round(x.data * 3)  # ties and explicit zeros
    dense = x.toarray()
    for top_n in (5, 20, 50):
        padded = pad_unexpressed(top_genes(x, top_n), x.shape[1])
        assert (padded >= 0).all()
        assert all(len(set(row)) == top_n for row in padded.tolist())
        assert padded.tolist() == [top_genes_reference(row, top_n, pad=True) for row in dense]


def test_pad_genes_from_the_cli_lists_top_n_for_every_cell(tmp_path):
    path = _write(make_adata(n_cells=30), tmp_path / "t.h5ad")
    args = ["data", "cells", path, "--top-n", "50", "--params", defaults_params(tmp_path)]
    assert main([*args, "-o", str(tmp_path / "plain.parquet")]) == 0
    assert main([*args, "-o", str(tmp_path / "padded.parquet"), "--pad-genes"]) == 0
    plain = pd.read_parquet(tmp_path / "plain.parquet").set_index("cell_id").top_genes
    padded = pd.read_parquet(tmp_path / "padded.parquet").set_index("cell_id").top_genes
    assert plain.map(len).max() < 50 and (padded.map(len) == 50).all()
    for cell, genes in plain.items():  # the expressed genes first, in the same order
        assert list(padded[cell][: len(genes)]) == list(genes)


def test_batch_key_none_from_the_cli(tmp_path):
    path = _write(make_adata(n_cells=20), tmp_path / "t.h5ad")
    assert main(["data", "cells", path, "-o", str(tmp_path / "c.parquet"), "--batch-key", "none", "--top-n", "3",
                 "--params", defaults_params(tmp_path)]) == 0


# ------------------------------------------------------------------ a directory of parts (the pipeline's fan-out)
def test_parts_directory_equals_the_fan_out_byte_for_byte_and_reads_like_one_file(tmp_path):
    from cello.config import PuzzlesConfig
    from cello.data.cells import make_cells_part, part_name
    from cello.data.puzzles import build_puzzles, read_cells

    raw = tmp_path / "raw"
    raw.mkdir()
    for seed, name in [(0, "a"), (1, "b"), (2, "c")]:
        _write(make_adata(n_cells=40, seed=seed), raw / f"{name}.h5ad")
    cfg = CellsConfig(top_n=5, workers=2)
    summary = make_cells([str(raw)], tmp_path / "all", cfg=cfg)  # no .parquet suffix: one part per file
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [part_name(i) for i in range(3)]
    assert summary.kept == 120
    for i in range(3):  # each part alone, as three pipeline tasks on three nodes would
        make_cells_part([str(raw)], i, tmp_path / "fan", cfg=cfg)
    for i in range(3):
        assert (tmp_path / "fan" / part_name(i)).read_bytes() == (tmp_path / "all" / part_name(i)).read_bytes()
    make_cells([str(raw)], tmp_path / "cells.parquet", cfg=cfg)
    merged, parts = read_cells(tmp_path / "cells.parquet"), read_cells(tmp_path / "fan")
    pd.testing.assert_frame_equal(merged, parts)
    pcfg = PuzzlesConfig(min_n=3, max_n=4, per_n=3)
    pd.testing.assert_frame_equal(build_puzzles(merged, cfg=pcfg)[0], build_puzzles(parts, cfg=pcfg)[0])


def test_parts_errors_name_the_part_and_the_fix(tmp_path):
    from cello.data.cells import make_cells_part
    from cello.data.puzzles import read_cells

    src = _write(make_adata(n_cells=20), tmp_path / "a.h5ad")
    with pytest.raises(InputError, match="part 3 asked for, but the inputs resolve to 1 file"):
        make_cells_part([src], 3, tmp_path / "parts", cfg=CellsConfig(top_n=5))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no part"):
        read_cells(tmp_path / "empty")
    make_cells_part([src], 0, tmp_path / "twice", cfg=CellsConfig(top_n=5))
    import shutil

    shutil.copy(tmp_path / "twice" / "part-00000.parquet", tmp_path / "twice" / "part-00001.parquet")
    with pytest.raises(InputError, match="share a dataset name"):
        read_cells(tmp_path / "twice")


def test_long_rows_next_to_empty_rows_at_the_end_of_a_block():
    x = sp.random(40, 2000, density=0.4, format="lil", random_state=6, dtype=np.float32)
    x[30:] = 0  # trailing cells with nothing stored
    x = sp.csr_matrix(x)
    dense = x.toarray()
    got = top_genes(x, 5)
    assert [[g for g in row if g >= 0] for row in got.tolist()] == [top_genes_reference(r, 5) for r in dense]
    assert (got[30:] == -1).all()


def test_the_stage_restores_the_allocation_settings_it_changes(tmp_path):
    """While a file is processed, Arrow allocates from the system pool and numpy stops asking
    for transparent huge pages (see `cello.data.cells._chunk_allocation`); both are process-wide,
    so they must be back as they were afterwards, after a failure too."""
    import pyarrow as pa

    from cello.data.cells import _set_madvise_hugepage

    path = _write(make_adata(n_cells=30), tmp_path / "ok.h5ad")
    pool = pa.default_memory_pool()
    collecting = gc.isenabled()
    try:
        for hugepage, gc_on in ((True, True), (False, False)):
            _set_madvise_hugepage(hugepage)
            (gc.enable if gc_on else gc.disable)()
            make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3))
            assert gc.isenabled() is gc_on
            with pytest.raises(InputError, match="no column 'nope'"):
                make_cells([path], tmp_path / "d.parquet", cfg=CellsConfig(top_n=3, cell_type_key="nope"))
            assert _set_madvise_hugepage(hugepage) is hugepage
            assert pa.default_memory_pool().backend_name == pool.backend_name
            assert gc.isenabled() is gc_on
    finally:
        (gc.enable if collecting else gc.disable)()


def test_the_garbage_collector_is_paused_while_a_file_is_processed(tmp_path, monkeypatch):
    """Loading the kernel would set off full collections (see `_chunk_allocation`): none runs
    while a file is processed, and collection is back on afterwards."""
    import cello.data.cells as cells_mod

    path = _write(make_adata(n_cells=30), tmp_path / "ok.h5ad")
    seen = []
    real_rank = cells_mod.top_genes

    def rank(*args, **kwargs):
        seen.append(gc.isenabled())
        return real_rank(*args, **kwargs)

    monkeypatch.setattr(cells_mod, "top_genes", rank)
    assert gc.isenabled()
    make_cells([path], tmp_path / "c.parquet", cfg=CellsConfig(top_n=3, chunk_size=8))
    assert seen and not any(seen) and gc.isenabled()
    # What the stage left alive went to the oldest generation (no young collection walks it),
    # and the garbage collector still collects: a cycle made afterwards is found.
    assert gc.get_count()[0] < 700 and gc.get_freeze_count() == 0

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle
    del cycle
    assert gc.collect() >= 1

    # Objects someone else froze stay frozen.
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        make_cells([path], tmp_path / "d.parquet", cfg=CellsConfig(top_n=3, chunk_size=8))
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_chunks_are_gathered_into_row_groups_with_the_same_rows(tmp_path, monkeypatch):
    """Each row group stores the gene names again (its dictionary): chunks are gathered into
    row groups of ROW_GROUP_CELLS cells, whole chunks; the chunks of the file's last
    ROW_GROUP_CELLS rows are written one by one (the stream does not end on a large write).
    Same rows as one row group per chunk."""
    import pyarrow.parquet as pq

    import cello.data.cells as cells_mod

    path = _write(make_adata(n_cells=60, seed=3), tmp_path / "toy.h5ad")

    def row_groups(cells: int, chunk_size: int) -> list[int]:
        monkeypatch.setattr(cells_mod, "ROW_GROUP_CELLS", cells)
        out = tmp_path / f"c{cells}-{chunk_size}.parquet"
        make_cells([path], out, cfg=CellsConfig(top_n=5, chunk_size=chunk_size))
        meta = pq.ParquetFile(out).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    assert row_groups(4, 4) == [4] * 15
    assert row_groups(12, 4) == [12] * 4 + [4] * 3
    assert row_groups(12, 8) == [16] * 3 + [8, 4]  # a group ends with the chunk that fills it
    assert row_groups(1000, 4) == [4] * 15  # the whole file is its last rows
    first = pq.read_table(tmp_path / "c4-4.parquet")
    for name in ("c12-4", "c12-8", "c1000-4"):
        assert pq.read_table(tmp_path / f"{name}.parquet").equals(first)


def test_the_kernel_loads_in_the_background_for_large_files_only(tmp_path, monkeypatch):
    """From COMPILED_FROM_CELLS cells on, the kernel starts loading before obs is read (its
    load then overlaps the file's start-up); below it, nothing loads it. Threads that rank
    while it loads wait for it (one load)."""
    import cello.data.cells as cells_mod
    import cello.data.topgenes as topgenes
    from cello.data.sources import count_cells

    path = _write(make_adata(n_cells=40), tmp_path / "toy.h5ad")
    assert count_cells(path) == 40 and count_cells(str(tmp_path / "missing.h5ad")) is None
    started = []
    monkeypatch.setattr(cells_mod, "load_compiled_in_background", lambda: started.append(True))
    make_cells([path], tmp_path / "a.parquet", cfg=CellsConfig(top_n=3))
    assert not started
    monkeypatch.setattr(cells_mod, "COMPILED_FROM_CELLS", 40)
    make_cells([path], tmp_path / "b.parquet", cfg=CellsConfig(top_n=3))
    assert started == [True]

    topgenes._compiled_kernels.cache_clear()
    try:
        topgenes.load_compiled_in_background()
        block = sp.random(20, 300, density=0.2, format="csr", random_state=1, dtype=np.float32)
        got = top_genes(block, 10, compiled=True)  # waits for the load started above
        assert topgenes._compiled_kernels() is not None
        assert (got == top_genes(block, 10)).all()
    finally:
        topgenes._compiled_kernels.cache_clear()
