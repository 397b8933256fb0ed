"""`cello serve` as a command: help, and user errors that exit 2 before anything starts."""

from __future__ import annotations

from cello.cli import main
from tests.conftest import defaults_params


def test_help(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--predictor-host" in out


def test_errors_exit_2(tmp_path, capsys):
    params = defaults_params(tmp_path)
    assert main(["serve", "--workers", "2", "--params", params]) == 2
    assert main(["serve", "--params", params]) == 2  # no --model
    assert main(["serve", "--model", str(tmp_path), "--params", params]) == 2  # not a model directory
    assert main(["serve", "--model", "x", "--max-new-tokens", "0", "--params", params]) == 2
    err = capsys.readouterr().err
    assert "replicas" in err and "--model" in err and "config.json" in err


def test_params_yaml_spells_out_the_defaults():
    from pathlib import Path

    from cello.config import Params, load_params

    path = Path(__file__).resolve().parents[2] / "params.yaml"
    p = load_params(path)
    assert p.serve == Params().serve and p.deploy == Params().deploy
