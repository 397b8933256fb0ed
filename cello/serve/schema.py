"""Request and response schemas of `cello serve`: one puzzle = donor context + cells + candidates.

Nothing from the network is trusted. Every field has a type, a length limit and a shape rule
(limits come from `ServeConfig`, passed as validation context), and a rejected request gets a
message that names the puzzle, the cell and the rule, e.g.

    puzzle 0, cells: 40 cells; the limit is 32 (serve.max_cells).
    puzzle 1, candidates: 'B cell' appears twice; candidates must be unique (case-insensitive).

A puzzle (JSON):

    {"id": "p1",                                      # optional
     "context": "The cell is from a female donor."   # or {"sex": "female", "tissue": "blood"}
     "cells": [{"id": "c1", "genes": ["CD3E", "CD4", "IL7R"]},          # ranked, highest first
               {"id": "c2", "expression": {"LYZ": 9.1, "CD14": 4.0}},   # top genes computed
               ["MS4A1", "CD79A"]],                                     # shorthand: a gene list
     "candidates": ["B cell", "CD4 T cell", "monocyte"]}

Names may not contain line breaks (any Unicode line or paragraph separator: U+2028, U+2029,
U+0085 too), control characters, '|' (the answer separator), ',' (genes only: the gene
separator of the prompt), '<' or '>' (a name like "</answer>" would forge the answer's tags),
or invisible format characters (bidi overrides, zero-width spaces: two names that look alike
but differ defeat the duplicate check), so that no input can change the structure of the
prompt or answer.
No text anywhere in a request may hold a lone UTF-16 surrogate (JSON allows the escape
"\\ud800"; such text cannot be encoded as UTF-8, tokenized, forwarded or answered): the
whole body is checked when it is decoded, and every text field again when it is validated.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cello.config import ServeConfig, describe
from cello.serve.errors import RequestError

__all__ = ["Options", "Puzzle", "RequestError", "parse_json", "parse_options", "parse_puzzles"]

_DEFAULT = ServeConfig()
# Control characters (Unicode Cc: C0, DEL, C1 incl. U+0085 NEL), line and paragraph separators
# (Zl U+2028, Zp U+2029) and the answer separator: each could start a new line or field in the prompt.
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029|]")
# Invisible format characters (Unicode Cf): bidi overrides and isolates, zero-width spaces and
# joiners, the BOM, the soft hyphen. They make two names look the same while they differ (the
# duplicate check sees two) or reorder what the model reads.
_INVISIBLE = re.compile(r"[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")
# '<' and '>': a name like "</answer>" or "<think>" would break the answer format the model writes.
_TAG = re.compile(r"[<>]")
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# What in a raw body can decode to a lone surrogate: a \uD800-\uDFFF escape, or the bytes of one
# (json.loads decodes bytes with 'surrogatepass'); a body with NUL bytes is UTF-16/32.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\x00")
_MAYBE_SURROGATE_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_HARD_CAP = 1_000_000  # a bound no config can lift (keeps pydantic from building huge lists)


def _limits(info: ValidationInfo) -> ServeConfig:
    ctx = info.context or {}
    return ctx.get("limits", _DEFAULT) if isinstance(ctx, dict) else _DEFAULT


def safe(text: str) -> str:
    """`text` with lone surrogates written as \\udXXX escapes: safe to put in a response."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(text) else text


def utf8(value: str, *, what: str) -> str:
    """`value` unchanged, or ValueError naming `what` when it is not encodable as UTF-8."""
    if value.isascii():  # the common case, at C speed (a regex over a 3.6 MB message takes 45 ms)
        return value
    found = _SURROGATE.search(value)
    if found:
        msg = (f"{what} is not valid Unicode text: it holds a lone UTF-16 surrogate "
               f"({safe(found.group())}) at character {found.start()}; send UTF-8 text")
        raise ValueError(msg)
    return value


def _name(value: str, *, what: str, limits: ServeConfig, comma: bool = True) -> str:
    text = utf8(value, what=what).strip()
    if not text:
        msg = f"{what} is empty"
        raise ValueError(msg)
    if len(text) > limits.max_name_length:
        msg = f"{what} is {len(text)} characters long; the limit is {limits.max_name_length} (serve.max_name_length)"
        raise ValueError(msg)
    if _BAD_NAME.search(text) or (not comma and "," in text):
        bad = "a line break or separator (U+2028, U+2029, U+0085), a control character" + (
            " or '|'" if comma else ", '|' or ','"
        )
        msg = f"{what} {text[:40]!r} contains {bad}, which would break the prompt"
        raise ValueError(msg)
    if _INVISIBLE.search(text):
        found = _INVISIBLE.search(text).group()  # type: ignore[union-attr]
        msg = (
            f"{what} {text[:40]!r} contains the invisible character U+{ord(found):04X} (a bidi control or "
            "zero-width character); send plain text"
        )
        raise ValueError(msg)
    if _TAG.search(text):
        msg = f"{what} {text[:40]!r} contains '<' or '>', which could forge the <think>/<answer> tags of the answer"
        raise ValueError(msg)
    return text


def check_text(data: Any, *, what: str = "the body") -> Any:
    """`data` (decoded JSON) unchanged, or RequestError naming the first text (key or value) that
    is not encodable as UTF-8, by its path: "the body: instances[0].cells[1][0] is not valid ..."."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            bad, where = value, path
        elif isinstance(value, dict):
            bad = where = None
            for key, item in value.items():
                sub = f"{path}.{safe(key)}" if path else safe(key)
                if _SURROGATE.search(key):
                    bad, where = key, f"the key '{sub}'"
                    break
                stack.append((item, sub))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(value))))
            continue
        else:
            continue
        if bad is not None:
            try:
                utf8(bad, what=f"{what}: {where}" if where else what)
            except ValueError as exc:
                raise RequestError(str(exc)) from None
    return data


def _unique(names: list[str], *, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        key = name.casefold()
        if key in seen:
            msg = f"{name!r} appears twice in {what}; {what} must be unique (case-insensitive)"
            raise ValueError(msg)
        seen.add(key)


def most_expressed_genes(expression: dict[str, float], k: int) -> list[str]:
    """The `k` genes with the highest non-zero expression, ties kept in the given order.

    The same rule as `cello data cells` (cello.data.topgenes): zeros are never ranked.
    """
    order = sorted(
        ((-value, i, gene) for i, (gene, value) in enumerate(expression.items()) if value != 0),
    )
    return [gene for _, _, gene in order[:k]]


class Cell(BaseModel):
    """One cell: a ranked top-gene list, or a gene -> expression map."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, max_length=_HARD_CAP)
    genes: list[str] | None = Field(None, max_length=_HARD_CAP, description="Top genes, highest expression first.")
    expression: dict[str, float] | None = Field(None, description="Gene -> expression; the top genes are computed.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"genes": data} if isinstance(data, list) else data

    @field_validator("expression", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for gene, x in value.items():
                if isinstance(x, bool) or not isinstance(x, int | float):
                    msg = f"expression of {str(gene)[:40]!r} is {type(x).__name__}; give a number"
                    raise ValueError(msg)
            return {g: float(x) for g, x in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Cell:
        limits = _limits(info)
        if self.id is not None:
            self.id = _name(self.id, what="cell id", limits=limits)
        if (self.genes is None) == (self.expression is None):
            msg = "give exactly one of 'genes' (a ranked list) or 'expression' (a gene -> value map)"
            raise ValueError(msg)
        if self.expression is not None:
            if not self.expression:
                msg = "'expression' is empty; give at least one gene"
                raise ValueError(msg)
            if len(self.expression) > limits.max_expression_genes:
                msg = (f"'expression' has {len(self.expression)} genes; the limit is {limits.max_expression_genes} "
                       "(serve.max_expression_genes)")
                raise ValueError(msg)
            for gene, x in self.expression.items():
                _name(gene, what="gene", limits=limits, comma=False)
                if not math.isfinite(x):
                    msg = f"expression of {gene!r} is {x}; give a finite number"
                    raise ValueError(msg)
            self.genes = most_expressed_genes(self.expression, limits.top_genes)
            if not self.genes:
                msg = "every gene in 'expression' is 0; give at least one expressed gene"
                raise ValueError(msg)
            self.expression = None  # not needed past this point (and it can be large)
        else:
            assert self.genes is not None
            if not self.genes:
                msg = "'genes' is empty; give the cell's top genes, highest expression first"
                raise ValueError(msg)
            if len(self.genes) > limits.max_genes:
                msg = f"'genes' has {len(self.genes)} genes; the limit is {limits.max_genes} (serve.max_genes)"
                raise ValueError(msg)
            self.genes = [_name(g, what="gene", limits=limits, comma=False) for g in self.genes]
            _unique(self.genes, what="the genes of a cell")
        return self


class Puzzle(BaseModel):
    """N cells from one donor, N candidate types: each candidate goes to exactly one cell."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, max_length=_HARD_CAP)
    context: str | dict[str, str] | None = Field(
        None, description="Donor context: a sentence, or fields (sex, tissue, ...)."
    )
    cells: list[Cell] = Field(..., max_length=_HARD_CAP)
    candidates: list[str] = Field(..., max_length=_HARD_CAP)
    _fields: dict[str, str] | None = PrivateAttr(None)  # the cleaned context fields, when given as fields

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Puzzle:
        limits = _limits(info)
        if self.id is not None:
            self.id = _name(self.id, what="puzzle id", limits=limits)
        n = len(self.cells)
        if not limits.min_cells <= n <= limits.max_cells:
            msg = (f"{n} cells; a puzzle has {limits.min_cells} to {limits.max_cells} cells "
                   "(serve.min_cells, serve.max_cells)")
            raise ValueError(msg)
        if len(self.candidates) != n:
            msg = f"{len(self.candidates)} candidates for {n} cells; give exactly one candidate type per cell"
            raise ValueError(msg)
        self.candidates = [_name(c, what="candidate", limits=limits) for c in self.candidates]
        _unique(self.candidates, what="candidates")
        ids = [c.id or f"cell_{i}" for i, c in enumerate(self.cells, 1)]
        _unique(ids, what="cell ids")
        self.context, self._fields = _context(self.context, limits)
        return self

    def context_for(self, profile: str) -> str:
        """The context under a prompt profile: given as fields, 'cell-o1' words them as the
        original pipeline does; a sentence is used as given (whitespace collapsed)."""
        if profile == "cell-o1" and self._fields is not None:
            from cello.data.context import CELL_O1_FIELDS, cell_o1_sentence

            return cell_o1_sentence(self._fields, extra=[k for k in self._fields if k not in CELL_O1_FIELDS])
        return self.context

    @property
    def cell_ids(self) -> list[str]:
        return [c.id or f"cell_{i}" for i, c in enumerate(self.cells, 1)]

    @property
    def cell_genes(self) -> list[list[str]]:
        return [list(c.genes or []) for c in self.cells]


def _context(value: str | dict[str, str] | None, limits: ServeConfig) -> tuple[str, dict[str, str] | None]:
    """The context sentence: free text (whitespace collapsed) or built from fields; and the
    cleaned fields when they were given."""
    from cello.data.context import clean, sentence

    if value is None:
        return "", None
    fields = None
    if isinstance(value, dict):
        if len(value) > 32:
            msg = f"context has {len(value)} fields; the limit is 32"
            raise ValueError(msg)
        fields = {}
        for key, text in value.items():
            name = _name(key, what="context field name", limits=limits)
            fields[name] = clean(_name(text, what=f"context field {name!r}", limits=limits)) if text.strip() else ""
        known = {"sex", "development_stage", "self_reported_ethnicity", "tissue", "disease"}
        value = sentence(fields, extra=[k for k in fields if k not in known])
    text = " ".join(utf8(value, what="context").split())  # also collapses U+2028, U+2029, U+0085
    if _BAD_TEXT.search(text):
        msg = f"context {text[:40]!r} contains a control character, which would break the prompt"
        raise ValueError(msg)
    if len(text) > limits.max_context_length:
        msg = (f"context is {len(text)} characters long; the limit is {limits.max_context_length} "
               "(serve.max_context_length)")
        raise ValueError(msg)
    return text, fields


class Options(BaseModel):
    """Per-request generation options (bounded by the server's settings)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Options:
        limits = _limits(info)
        if self.max_new_tokens is not None and self.max_new_tokens > limits.max_new_tokens:
            msg = f"max_new_tokens={self.max_new_tokens}; the limit is {limits.max_new_tokens} (serve.max_new_tokens)"
            raise ValueError(msg)
        return self


def parse_json(data: bytes | bytearray | str, *, what: str = "the body") -> Any:
    """json.loads with a client-facing RequestError for bad, non-UTF-8 or absurdly nested JSON,
    or JSON whose text holds a lone surrogate (the message names the field by its path)."""
    import json

    try:
        value = json.loads(data)
    except RecursionError:
        msg = f"{what} is nested too deeply to be a request"
        raise RequestError(msg) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        msg = f"{what} is not valid JSON ({exc})"
        raise RequestError(msg) from None
    return check_text(value, what=what) if _may_hold_surrogate(data) else value


def _may_hold_surrogate(data: bytes | bytearray | str) -> bool:
    """Whether a raw body can decode to a lone surrogate; substring tests first (memchr speed)."""
    if isinstance(data, bytes | bytearray):
        return (b"\\u" in data or b"\xed" in data or b"\x00" in data) and bool(_MAYBE_SURROGATE.search(data))
    return ("\\u" in data or not data.isascii()) and bool(_MAYBE_SURROGATE_TEXT.search(data))


def parse_puzzles(items: Any, *, limits: ServeConfig | None = None, where: str = "instances") -> list[Puzzle]:
    """Validate a list of puzzle objects; RequestError with a message naming the puzzle and field."""
    limits = limits or _DEFAULT
    if not isinstance(items, list):
        msg = f"'{where}' must be a list of puzzles, got {type(items).__name__}"
        raise RequestError(msg)
    if not items:
        msg = f"'{where}' is empty; send at least one puzzle"
        raise RequestError(msg)
    if len(items) > limits.max_puzzles:
        msg = f"{len(items)} puzzles in one request; the limit is {limits.max_puzzles} (serve.max_puzzles)"
        raise RequestError(msg)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            msg = f"puzzle {i}: expected an object with 'cells' and 'candidates', got {type(item).__name__}"
            raise RequestError(msg)
        try:
            out.append(Puzzle.model_validate(item, context={"limits": limits}))
        except ValidationError as exc:
            raise RequestError(describe(exc, prefix=f"puzzle {i}")) from None
    return out


def parse_options(value: Any, *, limits: ServeConfig | None = None) -> Options:
    """Validate the optional 'parameters' object of a request."""
    if value is None:
        return Options()
    if not isinstance(value, dict):
        msg = f"'parameters' must be an object, got {type(value).__name__}"
        raise RequestError(msg)
    try:
        return Options.model_validate(value, context={"limits": limits or _DEFAULT})
    except ValidationError as exc:
        raise RequestError(describe(exc, prefix="parameters", sep=".")) from None
