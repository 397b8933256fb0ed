"""Options shared by sub-commands, and `option`: a flag that sets one field of a config.

A flag that sets a config field takes its help and its shown default from the field, so the
CLI, the config and params.yaml cannot drift apart:

    top_n: int | None = option(CellsConfig, "top_n")                    # --top-n
    learning_rate: float | None = option(SFTStageConfig, "learning_rate", "--lr")
    ...
    cfg = override(p.data.cells, top_n=top_n)

The flag's own default is None, "not given": params.yaml (with --profile) decides unless the
flag is passed, and `override` replaces only what was passed.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.markup import escape

PARAMS = typer.Option(
    None, "--params",
    help="Params file: its settings replace the defaults shown, and flags replace its settings "
         "(default: ./params.yaml; without one: the built-in defaults).",
)
PROFILE = typer.Option(None, "--profile", help="Named profile in params.yaml (e.g. 'local').")

# Said by a flag whose field may be null: the command line has no null, so it takes 'none'.
NONE_NOTE = "Pass 'none' for null."


def shown_default(model: type[BaseModel], field: str, flags: tuple[str, ...] = ()) -> str | None:
    """The built-in default of `model.field` as `--help` shows it; None: nothing to show
    (null, or an empty list, mapping or text). A boolean shows the flag that matches it, as
    click does: `--packing/--no-packing` with default False shows `no-packing`."""
    value = model.model_fields[field].get_default(call_default_factory=True)
    if value is None or value in ("", [], {}):
        return None
    if isinstance(value, bool):
        pair = next((f for f in flags if "/" in f), None)
        if pair is None:
            return "true" if value else "false"
        on, off = pair.split("/", 1)
        return (on if value else off).lstrip("-")
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def choices(annotation: Any) -> list[str]:
    """The allowed values of a `Literal[...]` field type (also inside `... | None`); [] if free."""
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    if get_origin(annotation) in (Union, types.UnionType):
        return [c for arg in get_args(annotation) for c in choices(arg)]
    return []


def option(model: type[BaseModel], field: str, *flags: str, note: str = "", **kwargs: Any) -> Any:
    """A typer option that sets `model.field`: its help is the field's description (then
    `note`, for what only the command line needs to say), the allowed values when the field
    has a fixed set that the description does not already name, and the built-in default.

    `flags` are the option's names (default: from the parameter's name); `kwargs` go to
    `typer.Option`. The option's value is None when the flag is not given."""
    info = model.model_fields.get(field)
    if info is None or not info.description:
        msg = f"{model.__name__}.{field}: not a field with a description; an option must name one."
        raise TypeError(msg)
    text = escape(info.description) + (f" {escape(note)}" if note else "")
    allowed = choices(info.annotation)
    if allowed and not all(c in info.description for c in allowed):
        text += escape(f" One of: {', '.join(allowed)}.")
    shown = shown_default(model, field, flags)
    if shown is not None:  # styled as typer styles its own defaults
        text += f" [dim]\\[default: {escape(shown)}][/dim]"
    opt = typer.Option(None, *flags, help=text, show_default=False, **kwargs)
    opt.config_field = (model, field)  # what the CLI tests read back
    return opt


def prompt_option() -> Any:
    """`--prompt cello|cell-o1`: the prompt profile (`prompt.profile`) for one command."""
    from cello.config import PromptTemplate

    return option(PromptTemplate, "profile", "--prompt")


def prompt_layout_option() -> Any:
    """`--prompt-layout system-user|user-turn`: the prompt layout (`prompt.layout`) for one command."""
    from cello.config import PromptTemplate

    return option(PromptTemplate, "layout", "--prompt-layout")


def template_of(params: Any, profile: str | None, layout: str | None = None) -> Any:
    """The params' prompt template with `--prompt` (and `--prompt-layout`) applied."""
    from cello.config import override

    return override(params.prompt, profile=profile, layout=layout)
