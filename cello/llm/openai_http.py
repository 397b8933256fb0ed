"""Generation through any OpenAI-compatible `/chat/completions` endpoint.

A vLLM server (`vllm serve`, `trl vllm-serve`), KServe's `/openai/v1` route, or a hosted API:

    backend = OpenAIHTTPBackend("http://127.0.0.1:8000/v1", concurrency=16)
    backend = make_backend("openai:gpt-4o-mini@https://api.openai.com/v1")   # key from $OPENAI_API_KEY

Requests run concurrently on a thread pool (one request per conversation). 429, 5xx, timeouts
and connection errors are retried with exponential backoff and jitter, honouring Retry-After,
a bounded number of times; then a `CelloError` names the URL, the status and the start of the
body. Other 4xx answers fail at once (a retry cannot fix them). The API key is read from an
environment variable (only its name is ever logged). Token usage is summed when the server
reports it. Two rules a real vLLM server imposes: greedy requests (temperature 0) ask for one
completion and copy it n times (vLLM refuses n > 1 there), and max_tokens is capped at the
context the server lists in GET /models (vLLM answers 400 to a max_tokens above it).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import httpx

from cello.config import SamplingParams
from cello.errors import CelloError, ConfigError, UpstreamError
from cello.llm.base import Backend, Conversation, Generation, Progress, cut_at_stop

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


class OpenAIHTTPBackend(Backend):
    """Chat completions over HTTP, concurrent and retried."""

    name = "openai-http"

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 300.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        super().__init__()
        if not base_url.startswith(("http://", "https://")):
            msg = f"base_url={base_url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1."
            raise ConfigError(msg)
        if concurrency < 1 or max_retries < 0:
            msg = f"concurrency={concurrency}, max_retries={max_retries}; use concurrency >= 1 and max_retries >= 0."
            raise ConfigError(msg)
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        else:
            log.debug("no API key in $%s; sending requests without one", api_key_env)
        self.api_key_env = api_key_env
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._model = model
        self._max_model_len: int | None = None  # the served context (vLLM lists it in GET /models)
        self._capped_warned = False
        self._model_lock = threading.Lock()
        self._closed = threading.Event()

    # ------------------------------------------------------------ HTTP with retries
    def _request(
        self, method: str, path: str, json: dict | None = None, *, abort: threading.Event | None = None
    ) -> dict:
        """One call with bounded retries; `abort` (or close()) stops the waiting between attempts."""
        stop = abort or self._closed
        url = f"{self.base_url}/{path}"
        attempts = self.max_retries + 1
        last_status: int | None = None
        problem = ""
        for attempt in range(attempts):
            delay: float | None = None
            try:
                resp = self._client.request(method, path, json=json)
                with self._usage_lock:
                    self.usage.requests += 1
            except httpx.TimeoutException as exc:
                problem = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError as exc:
                        msg = (
                            f"{method} {url} answered {resp.status_code} with a body that is not JSON: "
                            f"{_excerpt(resp.text)!r}"
                        )
                        raise CelloError(msg) from exc
                last_status = resp.status_code
                problem = f"HTTP {resp.status_code}: {_excerpt(resp.text)!r}"
                if resp.status_code not in RETRY_STATUS:
                    hint = f" Check the API key in ${self.api_key_env}." if resp.status_code in (401, 403) else ""
                    msg = f"{method} {url} failed with {problem}.{hint}"
                    raise UpstreamError(msg, status_code=resp.status_code)
                delay = retry_after_seconds(resp.headers.get("retry-after"))
            if attempt + 1 == attempts or stop.is_set() or self._closed.is_set():
                break
            if delay is None:  # exponential backoff with "full jitter" in [b/2, b]
                base = min(self.backoff_max_s, self.backoff_s * 2**attempt)
                delay = random.uniform(base / 2, base)
            delay = min(delay, self.backoff_max_s)
            log.warning("%s %s: %s; retry %d/%d in %.2f s", method, url, problem, attempt + 1, self.max_retries, delay)
            if stop.wait(delay) or self._closed.is_set():
                break
        msg = (
            f"{method} {url} failed after {attempts} attempt(s); last: {problem}. "
            "Is the server up and the model loaded?"
        )
        raise UpstreamError(msg, status_code=last_status)

    @property
    def model(self) -> str:
        """The model name sent with each request; asked from GET /models when not given."""
        with self._model_lock:
            if self._model is None:
                data = self._request("GET", "models").get("data") or []
                if not data or "id" not in data[0]:
                    msg = (
                        f"GET {self.base_url}/models listed no model; "
                        "pass the model name (openai:MODEL@URL or backend.model)."
                    )
                    raise CelloError(msg)
                self._model = str(data[0]["id"])
                self._max_model_len = _int_or_none(data[0].get("max_model_len"))
                log.info(
                    "%s serves model %r (context %s tokens)",
                    self.base_url,
                    self._model,
                    self._max_model_len or "unknown",
                )
            return self._model

    def _max_tokens(self, wanted: int) -> int:
        """`wanted`, capped at the context the server listed: vLLM refuses a max_tokens above its
        max_model_len outright (400), while prompt + max_tokens over it is cut at the context."""
        limit = self._max_model_len
        if limit is None or wanted <= limit:
            return wanted
        if not self._capped_warned:
            self._capped_warned = True
            log.warning(
                "max_new_tokens=%d is above the context of %s (%d tokens); asking for %d",
                wanted,
                self.base_url,
                limit,
                limit,
            )
        return limit

    # ------------------------------------------------------------ generation
    def _payload(self, conversation: Conversation, params: SamplingParams, n: int) -> dict:
        body: dict = {
            "model": self.model,
            "messages": conversation,
            "max_tokens": self._max_tokens(params.max_new_tokens),
            "temperature": params.temperature,
            "n": n,
        }
        if params.temperature > 0 and params.top_p < 1:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _one(self, conversation: Conversation, params: SamplingParams, abort: threading.Event) -> Generation:
        texts: list[str] = []
        reasons: list[str | None] = []
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        # Greedy: one completion, copied n times (vLLM refuses n > 1 with temperature 0, and the
        # copies would be identical anyway); the token counts stay those of n completions.
        copies = params.n if params.temperature == 0 else 1
        wanted = 1 if copies > 1 else params.n
        while len(texts) < wanted:  # some servers ignore n > 1: ask again for the rest
            body = self._payload(conversation, params, wanted - len(texts))
            data = self._request("POST", "chat/completions", body, abort=abort)
            choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
            if not choices:
                msg = f"POST {self.base_url}/chat/completions answered without choices: {_excerpt(str(data))!r}"
                raise CelloError(msg)
            for c in choices[: wanted - len(texts)]:
                text, cut = cut_at_stop((c.get("message") or {}).get("content") or "", params.stop)
                texts.append(text)
                reasons.append("stop" if cut else c.get("finish_reason"))
            usage = data.get("usage") or {}
            if usage.get("prompt_tokens") is not None:
                prompt_tokens = int(usage["prompt_tokens"])
            if usage.get("completion_tokens") is not None:
                completion_tokens = (completion_tokens or 0) + int(usage["completion_tokens"])
        if copies > 1:
            texts, reasons = texts * copies, reasons * copies
            completion_tokens = None if completion_tokens is None else completion_tokens * copies
        return Generation(
            texts=texts, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finish_reasons=reasons
        )

    def _generate(
        self, conversations: list[Conversation], params: SamplingParams, progress: Progress | None
    ) -> list[Generation]:
        _ = self.model  # resolve once before fanning out
        abort = threading.Event()  # set on the first failure: the other requests stop retrying
        if len(conversations) == 1:  # one request (a served client's usual batch): no thread of its own
            result = self._one(conversations[0], params, abort)
            if progress is not None:
                progress(1)
            return [result]
        results: list[Generation | None] = [None] * len(conversations)
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(conversations)), thread_name_prefix="cello-http"
        ) as pool:
            futures = {pool.submit(self._one, c, params, abort): i for i, c in enumerate(conversations)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        abort.set()
                        for other in pending:
                            other.cancel()
                        raise fut.exception()  # type: ignore[misc]
                    results[futures[fut]] = fut.result()
                    if progress is not None:
                        progress(1)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._closed.set()
        self._client.close()
