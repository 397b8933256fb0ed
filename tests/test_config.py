"""The config package: every name importable from `cello.config`, no stage code imported,
errors that name the key, the rule and the value, and one formatter for pydantic errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError

import cello.config
from cello.config import PromptTemplate, PuzzlesConfig, describe, load_params, override, problems
from cello.errors import ConfigError


def test_every_exported_name_is_importable_from_the_package():
    for name in cello.config.__all__:
        assert getattr(cello.config, name) is not None, name
    from cello.data.prompt import PromptTemplate as FromData  # the data layer's name for it

    assert FromData is PromptTemplate


def test_the_configs_import_no_stage_code():
    code = "import sys, cello.config; print(sorted(m for m in sys.modules if m.startswith('cello')))"
    loaded = eval(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert {m for m in loaded if not m.startswith("cello.config")} == {"cello", "cello.errors"}


def test_an_invalid_params_file_lists_each_key_the_rule_and_the_value(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"cells": {"top_n": 0}, "puzzles": {"min_n": 9, "max_n": 8}}}))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: invalid settings (fix these keys):"
    assert "  data.cells.top_n: Input should be greater than or equal to 1 (got 0)" in lines
    # a cross-field rule: its own message names both values and the fix (no "Value error, " noise)
    assert "  data.puzzles: puzzles.max_n=8 is below puzzles.min_n=9; set max_n >= min_n." in lines


def test_an_invalid_override_names_the_flag_value():
    with pytest.raises(ConfigError,
                       match=r"invalid option .*\n  min_n: Input should be greater than or equal to 2 \(got 1\)"):
        override(PuzzlesConfig(), min_n=1)
    assert override(PuzzlesConfig(), min_n=None, per_n=3) == PuzzlesConfig(per_n=3)  # None: not given


class _Limits(BaseModel):
    a: int = Field(0, ge=0)
    b: list[int] = []
    c: dict[str, int] = {}


def _error(data) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Limits.model_validate(data)
    return info.value


def test_describe_is_one_line_for_a_client_capped_at_five_problems():
    exc = _error({"a": -1, "b": ["x"] * 6})
    assert problems(exc)[0] == "a: Input should be greater than or equal to 0"
    assert problems(exc, prefix="puzzle 2")[0] == "puzzle 2, a: Input should be greater than or equal to 0"
    assert problems(exc, prefix="parameters", sep=".")[0].startswith("parameters.a: ")
    line = describe(exc)
    assert "\n" not in line and line.count("; ") == 5 and line.endswith("; and 2 more")
    assert "got" not in line  # a client's own input is not echoed back


def test_problems_escape_lone_surrogates():
    exc = _error({"c": {"\ud800": "x"}})
    (line,) = problems(exc, given=True)
    line.encode("utf-8")  # printable and sendable
    assert line.startswith("c.") and line.endswith("(got 'x')")


def test_the_prompt_section_refuses_unknown_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"prompt": {"instructions": "typo"}}))
    with pytest.raises(ConfigError, match="prompt.instructions: Extra inputs are not permitted"):
        load_params(path)


def test_profiles_hold_settings_not_paths():
    # the local profile used to name runs/demo/tiny and runs/demo/sft-merged; models are passed
    # with --model (the pipeline always passes them)
    from tests.conftest import REPO

    profiles = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]
    for name, profile in profiles.items():
        for stage, section in (profile.get("train") or {}).items():
            assert "model" not in section, f"profiles.{name}.train.{stage}.model: pass --model instead"
