"""docs/paper-fidelity.md against the code: every row's Cello columns equal the defaults (params.yaml
without a profile, and the typed configs), TRL defaults Cello relies on are still TRL's, and every
row that differs from the released scripts says why."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cello.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "paper-fidelity.md"
COLUMNS = ["setting", "released", "source", "params.yaml", "config", "key", "why"]
STAGES = ["Data", "SFT", "GRPO", "Evaluation"]
SOURCE = re.compile(r"^`(data|src)/[\w./-]+\.(py|sh|yaml):\d+(-\d+)?`$")
MISSING = object()


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; `\\|` is a literal pipe inside a cell."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def parse_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """{stage: [row, ...]} from the `## Stage` sections' tables."""
    tables: dict[str, list[dict[str, str]]] = {}
    stage = None
    for line in text.splitlines():
        if line.startswith("## "):
            stage = line[3:].strip()
        elif stage and line.startswith("|"):
            cells = _cells(line)
            if cells == COLUMNS:
                tables[stage] = []
            elif stage in tables and not set("".join(cells)) <= set("-: "):
                assert len(cells) == len(COLUMNS), f"{stage}: row {cells[0]!r} has {len(cells)} cells, not 7"
                tables[stage].append(dict(zip(COLUMNS, cells, strict=True)))
    return tables


def literal(cell: str) -> Any:
    """The first `code` span of a cell as a YAML value; MISSING when the cell has none."""
    m = re.search(r"`([^`]*)`", cell)
    if not m:
        return MISSING
    return yaml.safe_load(m.group(1))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part, MISSING) if isinstance(obj, dict) else getattr(obj, part, MISSING)
        if obj is MISSING:
            return MISSING
    return obj


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    tables = parse_tables(DOC.read_text())
    assert list(tables) == STAGES, f"{DOC.name}: expected one table per stage {STAGES}, found {list(tables)}"
    for stage, table in tables.items():
        assert table, f"{DOC.name}: the {stage} table is empty"
    return [dict(row, stage=stage) for stage, table in tables.items() for row in table]


def test_parser_reads_rows_and_escaped_pipes():
    text = "## SFT\n\n| " + " | ".join(COLUMNS) + " |\n|---|---|---|---|---|---|---|\n" \
           "| a | `1` | `src/x.py:3` | a \\| b | `2` | `train.sft.epochs` | c |\n"
    [row] = parse_tables(text)["SFT"]
    assert row["params.yaml"] == "a | b" and literal(row["config"]) == 2 and literal(row["why"]) is MISSING


def test_readme_links_the_table():
    assert "docs/paper-fidelity.md" in (REPO / "README.md").read_text()


def test_every_row_cites_a_released_file_and_line(rows):
    bad = [f"{r['stage']}/{r['setting']}: {r['source']}" for r in rows if not SOURCE.match(r["source"])]
    assert not bad, f"source must be `path:line` in the released repository: {bad}"


def test_cello_columns_equal_the_defaults_in_code(rows):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.pop("profiles", None)
    from_yaml = load_params(REPO / "params.yaml")  # the default profile: no --profile
    built_in = Params()
    wrong = []
    for r in rows:
        key = r["key"].strip("`")
        if key == "-" or key.startswith("trl:"):
            continue
        if r["params.yaml"] == "-":  # params.yaml leaves it out: the config default applies
            if lookup(raw, key) is not MISSING:
                wrong.append(f"{key}: params.yaml sets it, the table says it does not")
        elif not same(literal(r["params.yaml"]), lookup(from_yaml, key)):
            wrong.append(f"{key}: table params.yaml {literal(r['params.yaml'])!r}, code {lookup(from_yaml, key)!r}")
        if not same(literal(r["config"]), lookup(built_in, key)):
            wrong.append(f"{key}: table config {literal(r['config'])!r}, code {lookup(built_in, key)!r}")
    assert not wrong, "docs/paper-fidelity.md disagrees with the code:\n" + "\n".join(wrong)


def test_trl_defaults_cello_relies_on(rows):
    trl = pytest.importorskip("trl")
    from cello.config import GRPOStageConfig, SFTStageConfig

    owners = {"SFTConfig": SFTStageConfig, "GRPOConfig": GRPOStageConfig}
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    wrong = []
    for r in (r for r in rows if r["key"].strip("`").startswith("trl:")):
        cls_name, field = r["key"].strip("`")[4:].split(".")
        default = {f.name: f.default for f in dataclasses.fields(getattr(trl, cls_name))}.get(field, MISSING)
        default = getattr(default, "value", default)  # enums (lr_scheduler_type)
        if not same(literal(r["config"]), default):
            wrong.append(f"{cls_name}.{field}: table {literal(r['config'])!r}, TRL {default!r}")
        stage = "sft" if cls_name == "SFTConfig" else "grpo"
        if field in owners[cls_name].OWNED_TRL_KEYS or field in (raw["train"][stage].get("trl") or {}):
            wrong.append(f"{cls_name}.{field}: Cello sets it, so it is not TRL's default; give it a params key")
    assert not wrong, "\n".join(wrong)


def test_differences_say_why(rows):
    silent = []
    for r in rows:
        cello = r["params.yaml"] if r["params.yaml"] != "-" else r["config"]
        released, ours = literal(r["released"]), literal(cello)
        agrees = (cello.startswith(("same", "the same")) if r["key"] == "`-`"
                  else released is not MISSING and same(released, ours))
        if not agrees and not r["why"]:
            silent.append(f"{r['stage']}/{r['setting']}")
    assert not silent, f"rows that differ from the released scripts without a why: {silent}"


def test_defaults_that_claim_the_paper_match_it():
    """The settings issue 14 found off, now equal to the released scripts."""
    p = Params()
    assert p.train.grpo.epochs == 20 and p.train.sft.eval_fraction == 0.1
    assert p.train.grpo.max_prompt_length == 3072 and p.train.grpo.loss_type == "bnpo"
    assert p.train.sft.lora.use_dora and p.train.sft.truncation_mode == "keep_end"
