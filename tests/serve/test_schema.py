"""The request schema: valid puzzles in every accepted shape, and a clear message naming the
puzzle, the field and the rule for each kind of bad input (no server needed)."""

from __future__ import annotations

import re

import pytest

from cello.config import ServeConfig
from cello.serve.schema import RequestError, most_expressed_genes, parse_json, parse_options, parse_puzzles

CANDS = ["B cell", "T cell", "monocyte"]


def puzzle(**over):
    base = {"cells": [["MS4A1", "CD79A"], ["CD3E", "CD4"], ["LYZ", "CD14"]], "candidates": list(CANDS)}
    base.update(over)
    return base


def test_all_cell_shapes_and_context_forms():
    (p,) = parse_puzzles(
        [
            {
                "id": "p1",
                "context": {"sex": "female", "tissue": "blood", "disease": "unknown", "batch": "b1"},
                "cells": [
                    {"id": "c1", "genes": ["MS4A1", " CD79A "]},
                    {"expression": {"CD3E": 5, "CD4": 2.5, "LYZ": 0}},
                    ["LYZ"],
                ],
                "candidates": CANDS,
            }
        ]
    )
    assert p.cell_ids == ["c1", "cell_2", "cell_3"]
    assert p.cell_genes == [["MS4A1", "CD79A"], ["CD3E", "CD4"], ["LYZ"]]
    # placeholders ("unknown") are dropped, like in `cello data cells`; extra fields are appended
    assert p.context == "The cell is from a female donor. The sample was taken from the blood. Batch: b1."
    (q,) = parse_puzzles([puzzle(context="  A  female\n donor. ")])
    assert q.context == "A female donor."


def test_top_genes_from_expression():
    # highest first, zeros never ranked, ties keep the given order, negatives rank low
    assert most_expressed_genes({"A": 1.0, "B": 3.0, "C": 0.0, "D": 3.0, "E": -1.0}, 10) == ["B", "D", "A", "E"]
    assert most_expressed_genes({"A": 1.0, "B": 3.0}, 1) == ["B"]
    limits = ServeConfig(top_genes=2)
    (p,) = parse_puzzles([puzzle(cells=[{"expression": {"X": 1, "Y": 2, "Z": 3}}, ["A"], ["B"]])], limits=limits)
    assert p.cell_genes[0] == ["Z", "Y"]


BAD = [
    (
        "too many cells",
        [puzzle(cells=[[f"G{i}"] for i in range(40)], candidates=[f"t{i}" for i in range(40)])],
        "40 cells",
    ),
    ("too few cells", [puzzle(cells=[["A"]], candidates=["x"])], "1 cells"),
    ("candidate count", [puzzle(candidates=CANDS[:2])], "2 candidates for 3 cells"),
    ("duplicate candidates", [puzzle(candidates=["B cell", "b cell ", "T cell"])], "appears twice in candidates"),
    ("empty genes", [puzzle(cells=[[], ["A"], ["B"]])], "'genes' is empty"),
    ("duplicate genes", [puzzle(cells=[["A", "A"], ["B"], ["C"]])], "appears twice in the genes"),
    ("too many genes", [puzzle(cells=[[f"G{i}" for i in range(300)], ["A"], ["B"]])], "the limit is 200"),
    ("gene with comma", [puzzle(cells=[["A,B"], ["B"], ["C"]])], "would break the prompt"),
    ("candidate with newline", [puzzle(candidates=["B\ncell", "T cell", "x"])], "would break the prompt"),
    ("candidate with bar", [puzzle(candidates=["B|cell", "T cell", "x"])], "would break the prompt"),
    ("empty candidate", [puzzle(candidates=["", "T cell", "x"])], "candidate is empty"),
    ("long name", [puzzle(candidates=["x" * 200, "T cell", "y"])], "serve.max_name_length"),
    ("wrong type gene", [puzzle(cells=[[1], ["B"], ["C"]])], "valid string"),
    ("wrong type cells", [puzzle(cells="MS4A1")], "valid list"),
    (
        "both genes and expression",
        [puzzle(cells=[{"genes": ["A"], "expression": {"A": 1}}, ["B"], ["C"]])],
        "exactly one of",
    ),
    ("expression not a number", [puzzle(cells=[{"expression": {"A": "high"}}, ["B"], ["C"]])], "give a number"),
    ("expression bool", [puzzle(cells=[{"expression": {"A": True}}, ["B"], ["C"]])], "give a number"),
    ("all zero", [puzzle(cells=[{"expression": {"A": 0}}, ["B"], ["C"]])], "every gene"),
    ("infinite", [puzzle(cells=[{"expression": {"A": float("inf")}}, ["B"], ["C"]])], "finite"),
    ("unknown field", [puzzle(color="red")], "Extra inputs"),
    (
        "duplicate cell ids",
        [puzzle(cells=[{"id": "c", "genes": ["A"]}, {"id": "c", "genes": ["B"]}, ["C"]])],
        "cell ids",
    ),
    ("long context", [puzzle(context="x" * 3000)], "serve.max_context_length"),
    # Unicode line/paragraph separators and C0/C1 controls act as line breaks in the prompt
    ("candidate with U+2028", [puzzle(candidates=["B\u2028cell", "T cell", "x"])], "would break the prompt"),
    ("candidate with U+2029", [puzzle(candidates=["B\u2029cell", "T cell", "x"])], "would break the prompt"),
    ("gene with U+0085", [puzzle(cells=[["A\x85B"], ["B"], ["C"]])], "would break the prompt"),
    ("gene with C1 control", [puzzle(cells=[["A\x9bB"], ["B"], ["C"]])], "would break the prompt"),
    (
        "expression gene with U+2028",
        [puzzle(cells=[{"expression": {"A\u2028B": 1}}, ["B"], ["C"]])],
        "would break the prompt",
    ),
    (
        "cell id with file separator",
        [puzzle(cells=[{"id": "c\x1c1", "genes": ["A"]}, ["B"], ["C"]])],
        "would break the prompt",
    ),
    ("context field with U+2029", [puzzle(context={"tissue": "lung\u2029x"})], "would break the prompt"),
    ("context with NUL", [puzzle(context="a donor\x00")], "control character"),
    # a lone UTF-16 surrogate cannot be encoded as UTF-8 (nor tokenized, nor sent upstream)
    ("gene surrogate", [puzzle(cells=[["\ud800"], ["B"], ["C"]])], "gene is not valid Unicode"),
    (
        "expression gene surrogate",
        [puzzle(cells=[{"expression": {"A\udfff": 1}}, ["B"], ["C"]])],
        "gene is not valid Unicode",
    ),
    ("candidate surrogate", [puzzle(candidates=["B\udc00", "T cell", "x"])], "candidate is not valid Unicode"),
    ("context surrogate", [puzzle(context="a \ud800 donor")], "context is not valid Unicode"),
    ("context field surrogate", [puzzle(context={"sex": "\ud800"})], "context field 'sex' is not valid Unicode"),
    ("context key surrogate", [puzzle(context={"\ud800": "x"})], "context field name is not valid Unicode"),
    ("puzzle id surrogate", [puzzle(id="p\ud800")], "id: Input should be a valid string"),
    ("context wrong type", [puzzle(context=5)], "context"),
    ("not an object", [5], "expected an object"),
    ("empty list", [], "is empty"),
    ("too many puzzles", [puzzle()] * 9, "9 puzzles"),
]


@pytest.mark.parametrize(("name", "items", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_puzzles_get_clear_messages(name, items, needle):
    with pytest.raises(RequestError) as info:
        parse_puzzles(items)
    assert needle in str(info.value)
    if items and isinstance(items[0], dict) and name != "too many puzzles":
        assert str(info.value).startswith("puzzle 0")


def test_not_a_list():
    with pytest.raises(RequestError, match="must be a list"):
        parse_puzzles({"cells": []})


def test_options():
    assert parse_options({"max_new_tokens": 5, "temperature": 0}).max_new_tokens == 5
    for bad, needle in [
        ({"max_new_tokens": 10**6}, "the limit"),
        ({"max_new_tokens": 0}, "greater"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 3}, "Extra"),
        ([], "object"),
    ]:
        with pytest.raises(RequestError, match=needle):
            parse_options(bad)


def test_separators_at_the_ends_are_stripped_like_spaces():
    (p,) = parse_puzzles([puzzle(candidates=["\u2028B cell\x85", "T cell", "monocyte"])])
    assert p.candidates[0] == "B cell"
    (q,) = parse_puzzles([puzzle(context="A\u2028female\u2029donor\x85from blood.")])
    assert q.context == "A female donor from blood."  # whitespace collapses, separators included


@pytest.mark.parametrize(
    ("candidate", "needle"),
    [
        ("B</answer>", "'<' or '>'"),  # would close the answer early
        ("<answer>T cell", "'<' or '>'"),
        ("B\u200bcell", "U+200B"),  # zero-width space: looks like "Bcell", is not its duplicate
        ("B cell\u200d", "U+200D"),  # zero-width joiner at the end (not stripped like a space)
        ("\u202eB cell", "U+202E"),  # right-to-left override
        ("B \u2066cell\u2069", "U+2066"),  # bidi isolate
        ("\ufeffB cell", "U+FEFF"),  # byte order mark
    ],
)
def test_names_with_tags_or_invisible_characters_are_refused(candidate, needle):
    with pytest.raises(RequestError, match=re.escape(needle)):
        parse_puzzles([puzzle(candidates=[candidate, "T cell", "monocyte"])])
    with pytest.raises(RequestError, match=re.escape(needle)):  # genes too
        parse_puzzles([puzzle(cells=[[candidate.replace(" ", "")], ["CD3E"], ["LYZ"]])])


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"instances": [{"cells": [["\\ud800"], ["X"]], "candidates": ["a", "b"]}]}', "instances[0].cells[0][0]"),
        (b'{"instances": [{"cells": [["A"], ["X"]], "candidates": ["a", "\\udfff"]}]}', "instances[0].candidates[1]"),
        (b'{"inputs": [{"name": "puzzles", "data": ["x"]}], "id": "\\udc00"}', "id"),
        (b'{"parameters": {"\\ud800x": 1}}', "the key 'parameters.\\ud800x'"),
        (b'["\xed\xa0\x80"]', "[0]"),  # the raw bytes of a surrogate (json.loads decodes them with surrogatepass)
        ('"\\ud800"'.encode("utf-16"), "the body is not valid Unicode"),
    ],
)
def test_parse_json_names_the_text_that_is_not_unicode(body, where):
    with pytest.raises(RequestError, match="lone UTF-16 surrogate") as info:
        parse_json(body)
    assert where in str(info.value)
    str(info.value).encode("utf-8")  # the message itself is safe to send back


def test_parse_json_keeps_valid_text():
    assert parse_json(b'["\\ud83d\\ude00", "\\\\ud800", "\xe2\x80\xa8"]') == ["\U0001f600", "\\ud800", "\u2028"]
    assert parse_json('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    with pytest.raises(RequestError, match="element: \\[1\\]"):
        parse_json('["ok", "\\udfff"]', what="puzzle 0: the element")


def test_describe_escapes_surrogates_in_locations():
    from cello.serve.schema import parse_puzzles as parse

    with pytest.raises(RequestError) as info:
        parse([{**puzzle(), "\ud800": 1}])
    str(info.value).encode("utf-8")
