"""cello._io: atomic outputs and the append-only journal that survives a crash.

    .venv/bin/pytest tests/test_io.py -q
"""

from __future__ import annotations

import json

import pytest

from cello._io import append_journal, read_journal, write_jsonl
from cello.errors import InputError


def test_journal_appends_and_reads_back(tmp_path):
    path = tmp_path / "j.jsonl"
    assert read_journal(path) == []  # absent: nothing done yet
    append_journal(path, [{"id": "a", "x": 1}])
    append_journal(path, [])  # nothing to append: the file is untouched
    append_journal(path, [{"id": "b", "text": "line\u2028break"}, {"id": "c"}])
    assert [r["id"] for r in read_journal(path)] == ["a", "b", "c"]
    assert read_journal(path)[1]["text"] == "line\u2028break"  # only '\n' ends a record


def test_journal_drops_a_torn_last_line_and_cuts_it_on_repair(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "te')  # a crash mid-append
    assert [r["id"] for r in read_journal(path)] == ["a"]
    assert "incomplete last line" in caplog.text
    assert path.read_text().endswith('"te')  # read only: the file is as it was
    assert [r["id"] for r in read_journal(path, repair=True)] == ["a"]
    assert path.read_text() == '{"id": "a"}\n'
    append_journal(path, [{"id": "b"}])  # appends start on a fresh line
    assert [r["id"] for r in read_journal(path)] == ["a", "b"]


def test_journal_restores_a_lost_newline_and_refuses_damage(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')  # complete, but the newline was lost
    assert [r["id"] for r in read_journal(path, repair=True)] == ["a", "b"]
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"id": "a"}\n{"no": "id"}\n{"id": "c"}\n')  # not a crash: damage before the last line
    with pytest.raises(InputError, match=r"j.jsonl:2: not a valid ledger row .*; start again"):
        read_journal(path, what="ledger row", fix="start again")


def test_write_jsonl_is_a_journal_too(tmp_path):
    path = tmp_path / "w.jsonl"
    assert write_jsonl([{"id": "a"}, {"id": "b"}], path) == 2
    assert read_journal(path) == [json.loads(line) for line in path.read_text().splitlines()]
