"""Property-based fuzzing of the request schema against the running server: whatever the body,
the answer is never a 5xx, an error is JSON with a message, and a 200 is a well-formed result.

Bodies are near-valid puzzles with random mutations (wrong types, empty and odd names, extra
fields, unbalanced counts) mixed with arbitrary JSON and raw bytes. Text draws from every
Unicode category, lone surrogates (sent as JSON escapes, "\\ud800"), line/paragraph separators
and control characters included; integers reach far past 64 bits. Bounded (derandomized)
so the run is short and repeatable.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Any code point (st.text leaves out surrogates by default), with the troublesome ones often:
# lone surrogates (Cs), U+2028/U+2029 (Zl, Zp), C0/C1 controls incl. U+0085 (Cc), format chars (Cf).
char = st.one_of(st.characters(exclude_categories=()), st.characters(categories=["Cs", "Zl", "Zp", "Cc", "Cf"]))
text = st.text(char, max_size=16)
huge_int = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, -1]))
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), huge_int,
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16), text)
any_json = st.recursive(
    leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.one_of(st.text(max_size=8), text), kids, max_size=4),
    max_leaves=10,
)
ODD = ["\ud800", "a\udfffb", "\udc00\ud800", "x\u2028y", "x\u2029y", "x\x85y", "x\x1cy", "x\x9by", "\u200bx"]
name = st.one_of(
    st.sampled_from(["CD3E", "LYZ", "MS4A1", "B cell", "T cell", "monocyte", "", " ", "a|b", "x\ny", "A,B", "Ω", *ODD]),
    st.text(max_size=12),
    st.text(char, max_size=12),
    leaf,
)
genes = st.lists(name, max_size=5)
cell = st.one_of(
    genes,
    st.fixed_dictionaries({"genes": genes}, optional={"id": name, "expression": any_json}),
    st.fixed_dictionaries(
        {
            "expression": st.dictionaries(
                st.text(max_size=8),
                st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), leaf),
                max_size=5,
            )
        },
        optional={"id": name},
    ),
    any_json,
)
puzzle = st.fixed_dictionaries(
    {
        "cells": st.one_of(st.lists(cell, min_size=2, max_size=4), any_json),
        "candidates": st.one_of(st.lists(name, min_size=2, max_size=4), any_json),
    },
    optional={
        "id": name,
        "context": st.one_of(st.text(max_size=40), st.dictionaries(st.text(max_size=10), name, max_size=3), any_json),
        "color": any_json,
    },
)
GENES = ["CD3E", "CD4", "LYZ", "CD14", "MS4A1", "CD79A", "NKG7", "GNLY", "PPBP", "HBB"]
TYPES = ["B cell", "T cell", "monocyte", "NK cell", "platelet", "erythrocyte", "b-cell", "Ω cell"]


@st.composite
def valid_puzzle(draw) -> dict:
    """A puzzle the schema accepts: unique candidates, one per cell, real-looking genes."""
    n = draw(st.integers(2, 4))
    candidates = draw(st.lists(st.sampled_from(TYPES), min_size=n, max_size=n, unique_by=str.casefold))
    ranked = st.lists(st.sampled_from(GENES), min_size=1, max_size=5, unique=True)
    expression = st.dictionaries(
        st.sampled_from(GENES), st.floats(-5, 100, allow_nan=False), min_size=1, max_size=4
    ).filter(lambda d: any(v != 0 for v in d.values()))
    cells = [
        draw(
            st.one_of(
                ranked, st.fixed_dictionaries({"genes": ranked}), st.fixed_dictionaries({"expression": expression})
            )
        )
        for _ in range(n)
    ]
    out = {"cells": cells, "candidates": candidates}
    if draw(st.booleans()):
        out["context"] = draw(
            st.one_of(
                st.text(max_size=40),
                st.fixed_dictionaries(
                    {}, optional={"sex": st.text(max_size=8), "tissue": st.sampled_from(["blood", "unknown", ""])}
                ),
            )
        )
    return out


parameters = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "max_new_tokens": st.one_of(st.integers(-2, 3), huge_int, leaf),
            "temperature": st.one_of(st.floats(-1, 3, allow_nan=False), huge_int, leaf),
        },
    ),
    any_json,
)
v1_body = st.one_of(
    st.fixed_dictionaries(
        {
            "instances": st.lists(valid_puzzle(), min_size=1, max_size=3),
            "parameters": st.fixed_dictionaries({"max_new_tokens": st.integers(1, 3)}),
        }
    ),
    st.fixed_dictionaries(
        {"instances": st.one_of(st.lists(st.one_of(valid_puzzle(), puzzle, any_json), max_size=3), any_json)},
        optional={"parameters": parameters, "id": leaf},
    ),
    any_json,
)


def post(client, path: str, body) -> object:
    """POST `body` as JSON with ASCII escapes (httpx's json= cannot encode a lone surrogate)."""
    return client.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def check(response) -> dict | list | None:
    event(f"HTTP {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()  # always JSON
    if response.status_code >= 400:
        error = body.get("error", body.get("detail")) if isinstance(body, dict) else None
        assert error, body
    return body


def odd_puzzle(**over) -> dict:
    base = {"cells": [["CD3E"], ["LYZ"]], "candidates": ["T cell", "monocyte"]}
    base.update(over)
    return {"instances": [base], "parameters": {"max_new_tokens": 1}}


@settings(max_examples=60, **SETTINGS)
@given(body=v1_body)
@example(body=odd_puzzle(cells=[["\ud800"], ["X"]]))  # the reviewer's reproducer: was a 500
@example(body=odd_puzzle(candidates=["\udfff", "b"]))
@example(body=odd_puzzle(context="donor \ud800"))
@example(body=odd_puzzle(cells=[{"id": "\udc00", "genes": ["A"]}, ["B"]]))
@example(body=odd_puzzle(cells=[{"expression": {"A\ud800": 1.0}}, ["B"]]))
@example(body=odd_puzzle(context={"sex": "\ud800"}))
@example(body=odd_puzzle(candidates=["a\u2028b", "c"]))  # line separators: were accepted
@example(body=odd_puzzle(cells=[["A\x85B"], ["X"]]))
@example(body={**odd_puzzle(), "parameters": {"max_new_tokens": 2**64, "temperature": -(2**70)}})
def test_fuzz_v1(client, body):
    r = post(client, "/v1/models/cello:predict", body)
    out = check(r)
    if r.status_code == 200:
        for result, p in zip(out["predictions"], body["instances"], strict=True):
            assert sorted(result["assignment"].values()) == sorted(c.strip() for c in p["candidates"])


@settings(max_examples=30, **SETTINGS)
@given(
    elements=st.lists(st.one_of(valid_puzzle().map(json.dumps), puzzle.map(json.dumps), any_json), max_size=3),
    shape=st.one_of(st.none(), st.none(), st.lists(st.integers(-1, 4), max_size=2)),
    datatype=st.sampled_from(["BYTES", "BYTES", "BYTES", "INT32", "FP16", "x"]),
    extra=st.dictionaries(st.sampled_from(["parameters", "id", "outputs"]), any_json, max_size=2),
)
@example(
    elements=[json.dumps({"cells": [["\ud800"], ["X"]], "candidates": ["a", "b"]})],
    shape=None,
    datatype="BYTES",
    extra={},
)
@example(
    elements=[json.dumps({"cells": [["A"], ["X"]], "candidates": ["a", "b"]}, ensure_ascii=False)],
    shape=None,
    datatype="BYTES",
    extra={"id": "\ud800"},
)  # echoed as the response id
@example(elements=[], shape=None, datatype="BYTES", extra={"parameters": {"\ud800": 1}})  # echoed in the error
def test_fuzz_v2(client, elements, shape, datatype, extra):
    tensor = {
        "name": "puzzles",
        "datatype": datatype,
        "shape": [len(elements)] if shape is None else shape,
        "data": elements,
    }
    body = {"inputs": [tensor], "parameters": {"max_new_tokens": 2}, **extra}
    r = post(client, "/v2/models/cello/infer", body)
    check(r)


messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["system", "user", "assistant", "tool", ""]),
                "content": st.one_of(
                    st.text(max_size=40),
                    text,
                    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2),
                    leaf,
                ),
            }
        ),
        any_json,
    ),
    max_size=3,
)
HI = [{"role": "user", "content": "hi"}]


@settings(max_examples=30, **SETTINGS)
@given(
    body=st.one_of(
        st.fixed_dictionaries(
            {"model": st.one_of(st.just("cello"), leaf), "messages": messages},
            optional={
                "max_tokens": st.one_of(st.integers(-1, 3), huge_int, leaf),
                "n": leaf,
                "stop": any_json,
                "stream": leaf,
                "temperature": leaf,
                "seed": st.one_of(huge_int, leaf),
            },
        ),
        any_json,
    )
)
@example(body={"model": "cello", "messages": [{"role": "user", "content": "\ud800"}], "max_tokens": 1})  # was a 500
@example(
    body={
        "model": "cello",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}],
        "max_tokens": 1,
    }
)
@example(body={"model": "cello", "messages": HI, "max_tokens": 1, "stop": ["\ud800"]})
@example(body={"model": "cello", "messages": HI, "max_tokens": 1, "seed": 2**64})  # was a 500 (torch seed overflow)
@example(body={"model": "cello", "messages": HI, "max_tokens": 1, "seed": -(2**63) - 1})
@example(body={"model": "cello", "messages": HI, "max_tokens": 1, "seed": 2**63 - 1})  # the largest seed: a 200
@example(body={"model": "cello", "messages": HI, "max_tokens": 2**70})
def test_fuzz_openai_chat(client, body):
    r = post(client, "/openai/v1/chat/completions", body)
    check(r)


@settings(max_examples=30, **SETTINGS)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.just(b'{"instances": [{"cells": [{"expression": {"A": NaN}}, ["B"]], "candidates": ["x", "y"]}]}'),
        st.just(b'{"instances": [{"cells": [["\xed\xa0\x80"], ["B"]], "candidates": ["x", "y"]}]}'),  # surrogate bytes
        st.just('{"instances": [{"cells": [["\\ud800"], ["B"]], "candidates": ["x", "y"]}]}'.encode("utf-16")),
    ),
    path=st.sampled_from(["/v1/models/cello:predict", "/v2/models/cello/infer", "/openai/v1/chat/completions"]),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/octet-stream", "application/cloudevents+json"]
    ),
)
def test_fuzz_raw_bodies(client, raw, path, content_type):
    r = client.post(path, content=raw, headers={"Content-Type": content_type})
    check(r)
