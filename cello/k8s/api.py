"""The Kubernetes API connection shared by the launchers, deploy and cleanup.

Credentials come from where the step runs, as kubectl finds them: the pod's ServiceAccount in a
cluster, else the kubeconfig ($KUBECONFIG or ~/.kube/config). Transient failures (connection
errors, 429, 5xx) are retried a bounded number of times with backoff; anything else becomes a
`ClusterError` naming the call, and for 401/403 the RBAC fix.

    from cello.k8s.api import connect, call
    api = connect()
    pods = call(api.core.list_namespaced_pod, "cello", label_selector="...", what="list pods", retries=5)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cello.deps import require
from cello.errors import UpstreamError

log = logging.getLogger(__name__)
T = TypeVar("T")

_SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path, not a secret


class ClusterError(UpstreamError):
    """The Kubernetes API refused or failed a call; the message names the call and the fix."""


@dataclass(frozen=True)
class Clients:
    """Typed clients of one configured connection."""

    core: Any  # kubernetes.client.CoreV1Api
    custom: Any  # kubernetes.client.CustomObjectsApi
    networking: Any  # kubernetes.client.NetworkingV1Api


def load_config() -> None:
    """Configure the `kubernetes` client: in-cluster ServiceAccount, else the kubeconfig."""
    config = require("kubernetes.config", "pipeline")
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(_SA_TOKEN):
        config.load_incluster_config()
        return
    try:  # $KUBECONFIG read now: the client reads it once, when first imported
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    except config.ConfigException as exc:
        msg = (f"no Kubernetes credentials: not in a pod with a ServiceAccount token, and no usable "
               f"kubeconfig ({exc}); run the step in the cluster, or set KUBECONFIG.")
        raise ClusterError(msg) from exc


def connect() -> Clients:
    """Load the configuration and return the clients Cello uses."""
    load_config()
    client = require("kubernetes.client", "pipeline")
    api = client.ApiClient()
    return Clients(core=client.CoreV1Api(api), custom=client.CustomObjectsApi(api),
                   networking=client.NetworkingV1Api(api))


def http_status(exc: BaseException | None) -> int | None:
    """The HTTP status behind `exc`, looking through wrappers (SDKs raise RuntimeError from ApiException)."""
    seen = 0
    while exc is not None and seen < 10:
        status = getattr(exc, "status", None)
        if isinstance(status, int) and status >= 100:
            return status
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: no answer at all, throttling, or a server-side error."""
    status = http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    import urllib3

    cur: BaseException | None = exc
    for _ in range(10):
        if cur is None:
            break
        if isinstance(cur, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def explain(exc: BaseException, what: str) -> ClusterError:
    """A ClusterError for `what` that says why it failed and how to fix it."""
    status = http_status(exc)
    detail = (getattr(exc, "reason", None) or str(exc)).strip().splitlines()[0][:300]
    if status in (401, 403):
        msg = (f"{what}: refused for this step's ServiceAccount (HTTP {status}: {detail}); grant it in the Role "
               "of k8s/base (cello.k8s.permissions.PERMISSIONS lists every call Cello makes).")
    elif status == 404:
        msg = f"{what}: not found (HTTP 404: {detail}); check that the CRD or object is installed (k8s/base)."
    elif status is not None:
        msg = f"{what}: the API server answered HTTP {status} ({detail})."
    else:
        msg = f"{what}: the API server could not be reached ({detail}); check the cluster and the network."
    return ClusterError(msg, status_code=status)


def call(fn: Callable[..., T], *args: Any, what: str, retries: int = 5, missing_ok: bool = False,
         backoff: float = 0.5, **kwargs: Any) -> T | None:
    """`fn(*args, **kwargs)`, retrying transient failures up to `retries` times.

    The first retry waits `backoff` seconds, each next one twice as long (at most 10 s).
    With `missing_ok`, a 404 returns None (a read of something gone, a delete of something
    already deleted). Every other failure raises a ClusterError that names `what`.
    """
    delay, attempt = backoff, 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sorted below; SDKs wrap ApiException in RuntimeError
            if missing_ok and http_status(exc) == 404:
                return None
            if attempt >= retries or not is_transient(exc):
                raise explain(exc, what) from exc
            attempt += 1
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, type(exc).__name__, attempt, retries, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
