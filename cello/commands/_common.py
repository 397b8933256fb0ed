"""Options shared by sub-commands."""

from __future__ import annotations

import typer

PARAMS = typer.Option(None, "--params", help="Params file to read settings from [./params.yaml; without one: the built-in defaults].")
PROFILE = typer.Option(None, "--profile", help="Named profile in params.yaml (e.g. 'local').")
