"""CLI sub-commands, one module per stage. Module level imports: typer, rich, pydantic and
cello.config only, so `--help` answers at once."""
