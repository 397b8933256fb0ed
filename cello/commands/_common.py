"""Options shared by sub-commands."""

from __future__ import annotations

from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read defaults from (missing: built-in defaults).")
PROFILE = typer.Option(None, "--profile", help="Named profile in params.yaml (e.g. 'local').")
