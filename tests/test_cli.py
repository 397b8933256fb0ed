"""The `cello` command as a whole: every sub-command answers --help, and every flag that sets a
config field shows that field's description and built-in default, so the two cannot drift."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest
import typer.rich_utils
import yaml
from typer.main import get_command

from cello.cli import app, main
from cello.commands._common import option, shown_default
from cello.config import CellsConfig, DeployConfig, GateConfig, SFTStageConfig
from tests.conftest import REPO


def _commands(group, path: tuple[str, ...] = ()):
    """(path, command) for every group and command under `group` (click objects, as typer
    builds them), depth first."""
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


COMMANDS = list(_commands(get_command(app)))
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not hasattr(cmd, "commands")]


def _config_options(cmd) -> list[tuple]:
    """The options of `cmd` built by `option`, with the config field each one sets."""
    defaults = {name: p.default for name, p in inspect.signature(cmd.callback).parameters.items()}
    return [(param, *defaults[param.name].config_field) for param in cmd.params
            if hasattr(defaults.get(param.name), "config_field")]


def _help(argv: list[str], capsys, monkeypatch) -> str:
    """`cello ARGV --help` on a terminal wide enough that no help text wraps, plain text."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)
    assert main([*argv, "--help"]) == 0
    return re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)


def _row(text: str, flag: str) -> str:
    """The line of the options table that starts with `flag` (a row never wraps at this width)."""
    rows = [line for line in text.splitlines() if re.match(rf"[│\s*]*{re.escape(flag)}\b(?!-)", line)]
    assert len(rows) == 1, f"{flag}: {len(rows)} rows in\n{text}"
    return " ".join(rows[0].split())


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=" ".join)
def test_every_sub_command_has_help(path, capsys, monkeypatch):
    text = _help(list(path), capsys, monkeypatch)
    assert f"Usage: cello {' '.join(path)}" in text


BACKED = [(path, cmd) for path, cmd in LEAVES if _config_options(cmd)]


@pytest.mark.parametrize(("path", "cmd"), BACKED, ids=[" ".join(path) for path, _ in BACKED])
def test_config_flags_show_the_fields_description_and_default(path, cmd, capsys, monkeypatch):
    text = _help(list(path), capsys, monkeypatch)
    for param, model, field in _config_options(cmd):
        row = _row(text, param.opts[0])
        description = " ".join(model.model_fields[field].description.split())
        assert description in row, f"{param.opts[0]}: {model.__name__}.{field}'s description is not in {row!r}"
        pair = (f"{param.opts[0]}/{param.secondary_opts[0]}",) if param.secondary_opts else ()
        shown = shown_default(model, field, pair)
        if shown is None:
            assert "[default:" not in row, row
        else:
            assert f"[default: {shown}]" in row, f"{param.opts[0]}: [default: {shown}] is not in {row!r}"


def test_every_command_module_takes_its_flags_from_the_configs():
    backed = {path[0] for path, _ in BACKED}
    assert backed == {"baseline", "data", "eval", "k8s", "model", "pipeline", "serve", "train"}
    # no config-backed flag hand-writes a default in its help any more
    for _, cmd in LEAVES:
        for param, _, _ in _config_options(cmd):
            assert param.default is None and not param.show_default


def test_the_issues_example_reads_from_the_config(capsys, monkeypatch):
    # "Genes per cell [50]" was written by hand in the command, in the config and in params.yaml
    row = _row(_help(["data", "cells"], capsys, monkeypatch), "--top-n")
    assert row.endswith("Genes per cell, highest expression first (the paper: 50). [default: 50] │")
    row = _row(_help(["train", "sft"], capsys, monkeypatch), "--packing")
    assert "Pack several conversations" in row and "[default: no-packing]" in row
    row = _row(_help(["eval", "gate"], capsys, monkeypatch), "--metric")  # a fixed set, named from the type
    assert "One of: batch_accuracy, cell_accuracy, repaired_batch_accuracy, repaired_cell_accuracy." in row
    row = _row(_help(["train", "sft"], capsys, monkeypatch), "--model")
    assert "[default: Qwen/Qwen2.5-7B-Instruct]" in row


def test_shown_default():
    assert shown_default(CellsConfig, "top_n") == "50"
    assert shown_default(CellsConfig, "max_cells") is None          # null: nothing shown
    assert shown_default(CellsConfig, "extra_context_fields") is None  # empty list
    assert shown_default(CellsConfig, "context_fields").startswith("sex, development_stage")
    assert shown_default(SFTStageConfig, "packing", ("--packing/--no-packing",)) == "no-packing"
    assert shown_default(DeployConfig, "auth", ("--auth/--no-auth",)) == "auth"
    assert shown_default(DeployConfig, "auth") == "true"
    assert shown_default(GateConfig, "min_accuracy") == "0.0"


def test_option_needs_a_described_field():
    with pytest.raises(TypeError, match="CellsConfig.top_m: not a field with a description"):
        option(CellsConfig, "top_m")
    opt = option(CellsConfig, "top_n", "--top-n", note="Use [brackets] freely.")
    assert opt.default is None and opt.config_field == (CellsConfig, "top_n")
    assert r"\[brackets]" in opt.help  # escaped: rich would read [brackets] as markup and drop it


def test_a_flag_not_given_keeps_the_params_value_and_a_flag_given_replaces_it(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"deploy": {"namespace": "from-params", "runtime_name": "rt-params"}}))
    assert main(["k8s", "render", "runtime", "--params", str(params)]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert (doc["metadata"]["namespace"], doc["metadata"]["name"]) == ("from-params", "rt-params")
    assert main(["k8s", "render", "runtime", "--params", str(params), "--namespace", "from-flag"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert (doc["metadata"]["namespace"], doc["metadata"]["name"]) == ("from-flag", "rt-params")


def test_a_bad_flag_value_names_the_field_the_rule_and_the_value(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    assert main(["k8s", "render", "runtime", "--params", str(params), "--namespace", "Not_A_Label"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "namespace: String should match pattern" in err and "(got 'Not_A_Label')" in err


def _run_entry_point(body: str, *args: str) -> subprocess.CompletedProcess:
    """The `cello` entry point (`cello.cli.run`) in a fresh interpreter, with `main` replaced."""
    code = f"import atexit, pathlib, sys\nimport cello.cli\n{body}\ncello.cli.run()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_command_exits_with_mains_code_after_every_other_exit_handler(tmp_path):
    """`run` ends the process with os._exit (Arrow's thread pool can abort a normal exit), but only
    after the handlers the command registered ran: temp-dir cleanups, log flushes."""
    marker = tmp_path / "handler-ran"
    body = ("def fake_main():\n"
            "    atexit.register(pathlib.Path(sys.argv[1]).write_text, 'yes')\n"
            "    print('output before exit')\n"
            "    return 3\n"
            "cello.cli.main = fake_main")
    proc = _run_entry_point(body, str(marker))
    assert proc.returncode == 3 and proc.stdout == "output before exit\n"
    assert marker.read_text() == "yes"


def test_an_unexpected_exception_still_exits_1_with_its_traceback():
    proc = _run_entry_point("def fake_main():\n    raise RuntimeError('boom')\ncello.cli.main = fake_main")
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr
