"""`cello serve` shutting down with a backlog, and slow clients, on a server of its own.

Issue: with 80 requests queued, SIGTERM kept serving for KServe's 30 s, then 35 requests got a
plain-text 500 (CancelledError) and the process exited 31.6 s after the signal, past
Kubernetes' 30 s grace period. Now: readiness false and new work refused at once, what fits in
serve.drain_s is generated, the rest gets a JSON 503 with Retry-After, exit 0 inside the period.
Slow clients: headers that do not arrive within serve.read_timeout_s get 408 and the connection
is closed (there was no limit: a silent connection stayed open forever).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.serve.conftest import Server, puzzle

DRAIN_S = 6.0


@pytest.fixture(scope="module")
def draining_server(model_dir, tmp_path_factory):
    """One server for this module; the SIGTERM test (last) stops it."""
    tmp_path = tmp_path_factory.mktemp("drain")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"serve": {"drain_s": DRAIN_S, "read_timeout_s": 1.0}}))
    server = Server("drain", ["--model", str(model_dir), "--max-new-tokens", "64", "--threads", "1"],
                    log_dir=tmp_path, params=str(params))
    try:
        server.wait_ready("/v1/models/cello")
        yield server
    finally:
        server.stop()


def test_silent_connection_gets_408_and_is_closed(draining_server):
    with socket.create_connection(("127.0.0.1", draining_server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/cello:predict HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        reply = b""
        while chunk := sock.recv(65536):  # returns b"" once the server closes the connection
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"serve.read_timeout_s" in reply


def test_sigterm_with_a_backlog_exits_inside_the_drain_period(draining_server):
    import os
    import signal

    body = {"instances": [puzzle(i, cells=[[f"G{j}" for j in range(40)]] * 3) for i in range(8)],
            "parameters": {"max_new_tokens": 64}}
    answers: list = []

    def call() -> None:
        try:
            r = httpx.post(draining_server.url + "/v1/models/cello:predict", json=body, timeout=60)
            answers.append((r.status_code, r.headers.get("retry-after"), r.headers.get("content-type"), r.text))
        except httpx.HTTPError as exc:
            answers.append((None, None, None, repr(exc)))

    threads = [threading.Thread(target=call) for _ in range(40)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # queued
    start = time.monotonic()
    os.kill(draining_server.proc.pid, signal.SIGTERM)
    ready = httpx.get(draining_server.url + "/v2/health/ready", timeout=5).status_code
    late = httpx.post(draining_server.url + "/v1/models/cello:predict", json=body, timeout=5)
    code = draining_server.proc.wait(timeout=60)
    took = time.monotonic() - start
    for t in threads:
        t.join(60)
    assert code == 0
    assert took < DRAIN_S, f"exited {took:.1f} s after SIGTERM; the drain period is {DRAIN_S} s"
    assert ready == 503  # readiness false at once
    assert late.status_code == 503 and late.headers["retry-after"]  # new work refused at once, with an answer
    statuses = sorted(a[0] for a in answers)
    assert len(answers) == 40 and set(statuses) <= {200, 503}, answers[:3]
    assert 503 in statuses  # this backlog cannot fit in the period
    for status, retry_after, content_type, text in answers:
        if status == 503:
            assert retry_after and content_type == "application/json" and json.loads(text)["error"]
