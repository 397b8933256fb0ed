"""The `cello` command: one sub-command group per stage, each a thin call into the library.

    cello data cells builtin:pbmc68k -o data/cells.parquet
    cello data puzzles data/cells.parquet -o data/puzzles.parquet
    cello --help

Sub-command modules live in `cello/commands/` and import only typer and configs at module
level, so `--help` answers at once. `main(argv) -> int` is what tests call in-process.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys

import typer
from rich.console import Console
from rich.text import Text

from cello.errors import CelloError

app = typer.Typer(
    name="cello",
    help="Train, evaluate and serve LLM cell-type annotators (the Cell-o1 recipe).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (module in cello.commands, sub-command name). Every module must import: a broken one is an
# error here, not a sub-command that silently disappears.
_GROUPS = [
    ("data", "data"),
    ("baseline", "baseline"),
    ("evaluate", "eval"),
    ("model", "model"),
    ("train", "train"),
    ("serve", "serve"),
    ("k8s", "k8s"),
    ("pipeline", "pipeline"),
]

for _module, _name in _GROUPS:
    _mod = importlib.import_module(f"cello.commands.{_module}")
    if isinstance(getattr(_mod, "app", None), typer.Typer):
        app.add_typer(_mod.app, name=_name)
    else:  # a single command (e.g. `cello serve`)
        app.command(_name)(_mod.command)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # httpx logs every request at INFO: an eval's thousands, each call a transformer makes
        logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 a user-fixable error or a usage error)."""
    try:
        # With standalone_mode=False click returns a `typer.Exit` code instead of exiting.
        rv = app(args=argv if argv is not None else sys.argv[1:], prog_name="cello", standalone_mode=False)
    except CelloError as exc:
        Console(stderr=True, soft_wrap=True).print(Text("error: ", style="bold red") + Text(str(exc)))
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        # Usage errors (bad option, missing argument): click's ClickException, which typer
        # vendors under a private module, so it is recognised by its interface.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        raise
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """The `cello` command: `main`, then an exit that skips C++ static destructors.

    Arrow's thread pool can still be finishing a callback when the interpreter ends; its
    destructor then aborts the process (apache/arrow#34314): exit code 134 after a command that
    did all its work (measured: `cello data audit`, about 1 run in 40). So the exit comes last,
    after Python's own shutdown (threads joined, every other atexit handler run), as os._exit.
    """
    state = {"code": 1}  # an exception escaping main: the interpreter prints it, the exit code is 1
    atexit.register(_exit_hard, state)  # registered first, so it runs after every other handler
    state["code"] = main()
    sys.exit(state["code"])


def _exit_hard(state: dict) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(state["code"])


if __name__ == "__main__":
    run()
