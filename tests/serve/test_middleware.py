"""The ASGI guard alone (no server): token sources, open probe paths, body limit, route names."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from cello.errors import ConfigError
from cello.serve.middleware import Guard, TokenSource, Traffic, route_name


async def echo_app(scope, receive, send):
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def call(guard, method, path, **kw):
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(main())


def test_no_token_configured_means_open(monkeypatch):
    monkeypatch.delenv("CELLO_TEST_TOKEN", raising=False)
    guard = Guard(echo_app, max_body_bytes=100, tokens=TokenSource(env="CELLO_TEST_TOKEN", file=None))
    assert call(guard, "POST", "/v1/models/m:predict", content=b"abc").text == "3"


def test_env_token(monkeypatch):
    monkeypatch.setenv("CELLO_TEST_TOKEN", "s3cret")
    guard = Guard(echo_app, max_body_bytes=100, tokens=TokenSource(env="CELLO_TEST_TOKEN", file=None))
    assert call(guard, "POST", "/v1/models/m:predict").status_code == 401
    assert call(guard, "POST", "/v1/models/m:predict", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    for path in ("/", "/v2/health/live", "/v2/health/ready", "/v1/models/m", "/v2/models/m/ready", "/metrics"):
        assert call(guard, "GET", path).status_code == 200, path  # probes and metrics stay open
    assert call(guard, "POST", "/v2/health/ready").status_code == 401  # open means GET only
    r = call(guard, "POST", "/openai/v1/chat/completions")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"  # OpenAI error shape


def test_token_file_is_reread_when_it_changes(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("one\n")
    guard = Guard(echo_app, max_body_bytes=100, tokens=TokenSource(env=None, file=secret))
    assert call(guard, "POST", "/x", headers={"Authorization": "Bearer one"}).status_code == 200
    secret.write_text("two\n")
    os.utime(secret, (1, 1))  # a new mtime, as when Kubernetes swaps the Secret
    assert call(guard, "POST", "/x", headers={"Authorization": "Bearer one"}).status_code == 401
    assert call(guard, "POST", "/x", headers={"Authorization": "Bearer two"}).status_code == 200


def test_token_file_must_exist_and_not_be_empty(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TokenSource(env=None, file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        TokenSource(env=None, file=tmp_path / "empty")


def test_body_limit_counts_streamed_chunks():
    guard = Guard(echo_app, max_body_bytes=10, tokens=None)
    assert call(guard, "POST", "/x", content=b"x" * 10).text == "10"

    async def chunks():
        yield b"x" * 6
        yield b"x" * 6  # no Content-Length: the limit is checked while reading

    r = call(guard, "POST", "/x", content=chunks())
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["error"]
    assert call(guard, "POST", "/x", content=b"{}", headers={"Content-Length": "x"}).status_code in (400, 413)


@pytest.mark.parametrize(("path", "name"), [
    ("/v1/models/cello:predict", "v1_predict"), ("/v2/models/any/infer", "v2_infer"),
    ("/openai/v1/chat/completions", "openai_chat"), ("/v2/health/ready", "health"),
    ("/metrics", "metrics"), ("/v1/models/x/../../etc", "other"), ("/" + "a" * 500, "other"),
])
def test_route_names_are_bounded(path, name):
    assert route_name(path) == name


@pytest.mark.parametrize("path", ["/v2/repository/models/cello/unload", "/v2/repository/models/cello/load",
                                  "/v2/repository/index", "/v2/repository"])
def test_model_repository_routes_are_not_served(path, monkeypatch):
    monkeypatch.delenv("CELLO_TEST_TOKEN", raising=False)
    guard = Guard(echo_app, max_body_bytes=100, tokens=TokenSource(env="CELLO_TEST_TOKEN", file=None))
    for method in ("GET", "POST"):
        r = call(guard, method, path, **({"content": b"{}"} if method == "POST" else {}))
        assert r.status_code == 404 and "not served" in r.json()["error"], (method, path)
    assert call(guard, "POST", "/v2/repositoryx").status_code == 200  # only the extension's prefix


@pytest.mark.parametrize("breakage", ["empty", "whitespace", "deleted", "unreadable"])
def test_auth_fails_closed_when_the_token_file_breaks(tmp_path, caplog, breakage):
    """Issue: emptying or deleting the token file while the server ran turned auth off (200 without
    a token, nothing logged). Now every protected route is 401, loudly, until a valid token is back."""
    secret = tmp_path / "token"
    secret.write_text("one\n")
    guard = Guard(echo_app, max_body_bytes=100, tokens=TokenSource(env=None, file=secret))
    assert call(guard, "POST", "/v1/models/m:predict", headers={"Authorization": "Bearer one"}).status_code == 200
    if breakage == "empty":
        secret.write_text("")
    elif breakage == "whitespace":
        secret.write_text("  \n\t\n")
    elif breakage == "deleted":
        secret.unlink()
    else:
        secret.unlink()
        secret.mkdir()  # a directory where the file was: cannot be read
    with caplog.at_level("ERROR", logger="cello.serve.auth"):
        for headers in ({}, {"Authorization": "Bearer one"}, {"Authorization": "Bearer "}):
            r = call(guard, "POST", "/v1/models/m:predict", headers=headers)
            assert r.status_code == 401, (breakage, headers)
        r = call(guard, "POST", "/openai/v1/chat/completions")
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert "every protected route answers 401" in caplog.text
    assert call(guard, "GET", "/v2/health/ready").status_code == 200  # probes stay open
    if breakage == "unreadable":
        secret.rmdir()
    secret.write_text("two\n")  # a valid token is back
    assert call(guard, "POST", "/x", headers={"Authorization": "Bearer two"}).status_code == 200
    assert call(guard, "POST", "/x", headers={"Authorization": "Bearer one"}).status_code == 401


def test_auth_fails_closed_when_the_env_token_is_emptied(monkeypatch):
    monkeypatch.setenv("CELLO_TEST_TOKEN", "s3cret")
    guard = Guard(echo_app, max_body_bytes=100, tokens=TokenSource(env="CELLO_TEST_TOKEN", file=None))
    monkeypatch.setenv("CELLO_TEST_TOKEN", " ")
    assert call(guard, "POST", "/x").status_code == 401
    assert call(guard, "POST", "/x", headers={"Authorization": "Bearer  "}).status_code == 401


def test_a_client_that_disconnects_cancels_its_request():
    """Issue: work whose client had gone kept running. The guard watches for the disconnect and
    cancels the request (the batcher then withdraws its conversations)."""
    state = {"started": False, "cancelled": False}

    async def slow_app(scope, receive, send):
        await receive()  # the body
        state["started"] = True
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    async def main():
        guard = Guard(slow_app, max_body_bytes=100)
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
        leave = asyncio.Event()

        async def receive():
            if messages:
                return messages.pop(0)
            await leave.wait()
            return {"type": "http.disconnect"}

        sent = []

        async def send(message):
            sent.append(message)

        task = asyncio.create_task(guard({"type": "http", "method": "POST", "path": "/v1/models/m:predict",
                                          "headers": []}, receive, send))
        await asyncio.sleep(0.1)
        assert state["started"]
        leave.set()  # the client closes the connection
        await asyncio.wait_for(task, 5)
        return sent

    sent = asyncio.run(main())
    assert state["cancelled"] and sent == []  # nothing is sent to a client that is gone


def test_a_body_slower_than_the_read_timeout_gets_408():
    async def main():
        guard = Guard(echo_app, max_body_bytes=100, read_timeout_s=0.2)

        async def receive():  # the first half arrives, the rest never does
            if not state:
                state.append(1)
                return {"type": "http.request", "body": b"{", "more_body": True}
            await asyncio.sleep(30)

        sent = []

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(guard({"type": "http", "method": "POST", "path": "/x", "headers": []}, receive, send), 5)
        return sent

    state: list = []
    sent = asyncio.run(main())
    assert sent[0]["status"] == 408 and b"serve.read_timeout_s" in sent[1]["body"]


def test_head_is_answered_like_get_without_a_body(monkeypatch):
    monkeypatch.setenv("CELLO_TEST_TOKEN", "s3cret")

    async def get_only(scope, receive, send):
        status = 200 if scope["method"] == "GET" else 405
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(get_only, max_body_bytes=100, tokens=TokenSource(env="CELLO_TEST_TOKEN", file=None))
    r = call(guard, "HEAD", "/v2/health/ready")
    assert r.status_code == 200 and r.content == b""
    assert call(guard, "HEAD", "/v1/models/m:predict").status_code == 401  # HEAD is open only where GET is


def test_new_work_is_refused_while_draining():
    traffic = Traffic()
    guard = Guard(echo_app, max_body_bytes=100, traffic=traffic)
    assert call(guard, "POST", "/x", content=b"{}").status_code == 200
    assert call(guard, "GET", "/v2/health/ready").status_code == 200
    traffic.draining = True
    r = call(guard, "POST", "/v1/models/m:predict", content=b"{}")
    assert r.status_code == 503 and r.headers["retry-after"] and "shutting down" in r.json()["error"]
    for path in ("/v2/health/ready", "/v1/models/m", "/v2/models/m/ready"):
        assert call(guard, "GET", path).status_code == 503, path  # readiness turns false
    assert call(guard, "GET", "/v2/health/live").status_code == 200  # still alive
    assert traffic.in_flight == 0
