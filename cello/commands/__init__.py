"""CLI sub-commands, one module per stage. Module level imports: typer, cello.config only."""
