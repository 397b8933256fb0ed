"""Property-based fuzzing of the request schema against the running server: whatever the body,
the answer is never a 5xx, an error is JSON with a message, and a 200 is a well-formed result.

Bodies are near-valid puzzles with random mutations (wrong types, empty and odd names, extra
fields, unbalanced counts) mixed with arbitrary JSON and raw bytes. Bounded (derandomized)
so the run is short and repeatable.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16))
any_json = st.recursive(leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                        max_leaves=10)
name = st.one_of(st.sampled_from(["CD3E", "LYZ", "MS4A1", "B cell", "T cell", "monocyte", "", " ", "a|b", "x\ny", "A,B", "Ω"]),
                 st.text(max_size=12), leaf)
genes = st.lists(name, max_size=5)
cell = st.one_of(
    genes,
    st.fixed_dictionaries({"genes": genes}, optional={"id": name, "expression": any_json}),
    st.fixed_dictionaries({"expression": st.dictionaries(st.text(max_size=8), st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), leaf), max_size=5)},
                          optional={"id": name}),
    any_json,
)
puzzle = st.fixed_dictionaries(
    {"cells": st.one_of(st.lists(cell, min_size=2, max_size=4), any_json),
     "candidates": st.one_of(st.lists(name, min_size=2, max_size=4), any_json)},
    optional={"id": name, "context": st.one_of(st.text(max_size=40), st.dictionaries(st.text(max_size=10), name, max_size=3), any_json),
              "color": any_json},
)
GENES = ["CD3E", "CD4", "LYZ", "CD14", "MS4A1", "CD79A", "NKG7", "GNLY", "PPBP", "HBB"]
TYPES = ["B cell", "T cell", "monocyte", "NK cell", "platelet", "erythrocyte", "b-cell", "Ω cell"]


@st.composite
def valid_puzzle(draw) -> dict:
    """A puzzle the schema accepts: unique candidates, one per cell, real-looking genes."""
    n = draw(st.integers(2, 4))
    candidates = draw(st.lists(st.sampled_from(TYPES), min_size=n, max_size=n, unique_by=str.casefold))
    ranked = st.lists(st.sampled_from(GENES), min_size=1, max_size=5, unique=True)
    expression = st.dictionaries(st.sampled_from(GENES), st.floats(-5, 100, allow_nan=False), min_size=1, max_size=4).filter(
        lambda d: any(v != 0 for v in d.values()))
    cells = [draw(st.one_of(ranked, st.fixed_dictionaries({"genes": ranked}), st.fixed_dictionaries({"expression": expression})))
             for _ in range(n)]
    out = {"cells": cells, "candidates": candidates}
    if draw(st.booleans()):
        out["context"] = draw(st.one_of(st.text(max_size=40), st.fixed_dictionaries({}, optional={"sex": st.text(max_size=8), "tissue": st.sampled_from(["blood", "unknown", ""])})))
    return out


parameters = st.one_of(st.fixed_dictionaries({}, optional={"max_new_tokens": st.one_of(st.integers(-2, 3), leaf),
                                                           "temperature": st.one_of(st.floats(-1, 3, allow_nan=False), leaf)}),
                       any_json)
v1_body = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(valid_puzzle(), min_size=1, max_size=3),
                           "parameters": st.fixed_dictionaries({"max_new_tokens": st.integers(1, 3)})}),
    st.fixed_dictionaries({"instances": st.one_of(st.lists(st.one_of(valid_puzzle(), puzzle, any_json), max_size=3), any_json)},
                          optional={"parameters": parameters, "id": leaf}),
    any_json,
)


def check(response) -> dict | list | None:
    event(f"HTTP {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()  # always JSON
    if response.status_code >= 400:
        error = body.get("error", body.get("detail")) if isinstance(body, dict) else None
        assert error, body
    return body


@settings(max_examples=60, **SETTINGS)
@given(body=v1_body)
def test_fuzz_v1(client, body):
    r = client.post("/v1/models/cello:predict", json=body)
    out = check(r)
    if r.status_code == 200:
        for result, p in zip(out["predictions"], body["instances"], strict=True):
            assert sorted(result["assignment"].values()) == sorted(c.strip() for c in p["candidates"])


@settings(max_examples=30, **SETTINGS)
@given(elements=st.lists(st.one_of(valid_puzzle().map(json.dumps), puzzle.map(json.dumps), any_json), max_size=3),
       shape=st.one_of(st.none(), st.none(), st.lists(st.integers(-1, 4), max_size=2)),
       datatype=st.sampled_from(["BYTES", "BYTES", "BYTES", "INT32", "FP16", "x"]),
       extra=st.dictionaries(st.sampled_from(["parameters", "id", "outputs"]), any_json, max_size=2))
def test_fuzz_v2(client, elements, shape, datatype, extra):
    tensor = {"name": "puzzles", "datatype": datatype, "shape": [len(elements)] if shape is None else shape, "data": elements}
    body = {"inputs": [tensor], "parameters": {"max_new_tokens": 2}, **extra}
    r = client.post("/v2/models/cello/infer", json=body)
    check(r)


messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", ""]),
                           "content": st.one_of(st.text(max_size=40), st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}), max_size=2), leaf)}),
    any_json), max_size=3)


@settings(max_examples=30, **SETTINGS)
@given(body=st.one_of(st.fixed_dictionaries({"model": st.one_of(st.just("cello"), leaf), "messages": messages},
                                            optional={"max_tokens": st.one_of(st.integers(-1, 3), leaf), "n": leaf, "stop": any_json,
                                                      "stream": leaf, "temperature": leaf}),
                      any_json))
def test_fuzz_openai_chat(client, body):
    r = client.post("/openai/v1/chat/completions", json=body)
    check(r)


@settings(max_examples=30, **SETTINGS)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.just(b'{"instances": [{"cells": [{"expression": {"A": NaN}}, ["B"]], "candidates": ["x", "y"]}]}')),
       path=st.sampled_from(["/v1/models/cello:predict", "/v2/models/cello/infer", "/openai/v1/chat/completions"]),
       content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream", "application/cloudevents+json"]))
def test_fuzz_raw_bodies(client, raw, path, content_type):
    r = client.post(path, content=raw, headers={"Content-Type": content_type})
    check(r)
