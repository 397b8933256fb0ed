"""params.yaml read into one typed `Params`: loading, profiles, overrides, and readable errors.

`params.yaml` is the stage configs (the other modules of this package) written out with
comments; DVC, the CLI and the pipeline all read it through `load_params`. A `profiles:`
section holds named partial overrides (e.g. `local` for the tiny CPU model), applied with
`load_params(path, profile="local")`; `overrides` then set single dotted keys, and CLI flags
replace single fields of a section (`override`).

    from cello.config import load_params, override
    p = load_params("params.yaml", profile="local", overrides={"gate.min_accuracy": 0})
    cfg = override(p.data.puzzles, min_n=4)     # None means "flag not given": keep
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cello.config.base import Section
from cello.config.data import DataConfig
from cello.config.evaluate import BaselineConfig, EvalConfig, GateConfig
from cello.config.k8s import ClusterConfig, DeployConfig
from cello.config.llm import GenerationConfig, TinyModelConfig
from cello.config.pipeline import PipelineConfig
from cello.config.prompt import PromptTemplate
from cello.config.serve import ServeConfig
from cello.config.train import TrainConfig
from cello.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PARAMS = Path("params.yaml")


class Params(Section):
    """Everything in params.yaml."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # later stages add sections

    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptTemplate = Field(default_factory=PromptTemplate)
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)


S = TypeVar("S", bound=BaseModel)


def _printable(text: str) -> str:
    """`text` with lone UTF-16 surrogates written as escapes, so it can be printed or sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def problems(exc: ValidationError, *, prefix: str = "", sep: str = ", ", given: bool = False) -> list[str]:
    """One line per problem in `exc`: where it is (`prefix`, then the dotted field), what is
    wrong, and with `given` the value that was given (not when it is a whole section)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(_printable(str(p)) for p in err["loc"] if not str(p).startswith("function-"))
        text = _printable(err["msg"].removeprefix("Value error, "))
        if given and "input" in err and not isinstance(err["input"], dict):
            text += f" (got {_printable(repr(err['input']))})"
        head = f"{prefix}{sep}{loc}" if prefix and loc else prefix or loc
        lines.append(f"{head}: {text}" if head else text)
    return lines


def describe(exc: ValidationError, *, prefix: str = "", sep: str = ", ", most: int = 5) -> str:
    """The problems in `exc` on one line: the first `most`, then how many more (an error a
    client reads, e.g. `puzzle 0, cells: 40 cells; the limit is 32 (serve.max_cells)`)."""
    lines = problems(exc, prefix=prefix, sep=sep)
    more = len(lines) - most
    return "; ".join(lines[:most]) + (f"; and {more} more" if more > 0 else "")


def _listing(exc: ValidationError) -> str:
    """The problems in `exc`, one indented line each, with the values given (a settings error)."""
    return "\n".join(f"  {line}" for line in problems(exc, given=True))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`raw` with dotted keys set: {"gate.min_accuracy": 0.0, "train.grpo.max_steps": 10}.

    The first part must name a section of params.yaml (a typo is an error, not a new section);
    the rest is checked when the result is validated."""
    out = _deep_merge(raw, {})
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        if parts[0] not in Params.model_fields or not all(parts):
            msg = (f"override {key!r}: no such setting; the first part must be one of "
                   f"{sorted(Params.model_fields)} (e.g. gate.min_accuracy=0).")
            raise ConfigError(msg)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[parts[-1]] = value
    return out


def load_params(
    path: str | os.PathLike | None = None, *, profile: str | None = None, overrides: dict[str, Any] | None = None,
) -> Params:
    """Read a params file, apply a named profile, then `overrides` (dotted keys, see
    `apply_overrides`). `path` None means ./params.yaml, which may be absent (built-in
    defaults, said in the log); a file given explicitly must exist: a typo in --params must
    not silently start a run with the paper's 7B defaults."""
    raw: dict[str, Any] = {}
    if path is None:
        path = DEFAULT_PARAMS
        if not path.is_file():
            log.info("no %s in %s: using the built-in defaults", path, Path.cwd())
    elif not Path(path).is_file():
        msg = (f"{path}: no such params file; fix --params "
               "(without it, ./params.yaml or the built-in defaults are used).")
        raise ConfigError(msg)
    if Path(path).is_file():
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            msg = f"{path}: not valid YAML ({exc}); fix the file."
            raise ConfigError(msg) from exc
    profiles = raw.pop("profiles", {}) or {}
    if profile:
        if profile not in profiles:
            msg = f"{path}: no profile {profile!r}; known profiles: {sorted(profiles) or 'none'}."
            raise ConfigError(msg)
        raw = _deep_merge(raw, profiles[profile])
    raw = apply_overrides(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        msg = f"{path}: invalid settings (fix these keys):\n{_listing(exc)}"
        raise ConfigError(msg) from exc


def override(section: S, **values: Any) -> S:
    """A copy of `section` with the given fields replaced; None means 'not given' (keep)."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return section.model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        msg = f"invalid option (the flag or params.yaml key named below):\n{_listing(exc)}"
        raise ConfigError(msg) from exc
