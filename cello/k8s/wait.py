"""Wait on a cluster job until it completes, and fail the step for every other ending.

Public launchers get this wrong: Kubeflow's own PyTorchJob launcher component and InstructLab's
pipeline wait for "Succeeded or Failed" and return normally either way, so a failed training
job passes the step. The Kubeflow SDK's `wait_for_job_status` raises on Failed but without the
job's reason, raises the same RuntimeError for a job that was deleted and for a network blip,
cannot see pods stuck Pending, and leaves the job running when its timeout passes. Here the step
succeeds only when the job is complete, and fails with a `JobError` that says why:

- `JobFailed`: the job's Failed condition (reason, message), how each failed pod ended and the
  last log lines of node 0;
- `JobDeadlineExceeded`: it ran past `cluster.active_deadline_s` (the job is deleted);
- `JobVanished`: it was deleted by someone else while the step waited;
- `PodsPending`: a pod stayed Pending past `cluster.pending_timeout_s` with none of its containers
  started; the pod and why (its scheduling condition, container waits, Warning events) are named,
  and the job is deleted so it cannot start later behind the failed step's back.

Logs of node 0 stream into `log` while the job runs (a follower thread reads them, the waiting
thread hands them to `log`). When the step is cancelled (SIGTERM -> SystemExit, or Ctrl-C), the
job is deleted before the exception goes on. The loop works on any `Workload` (TrainJob,
PyTorchJob, a bare pod): see `cello.k8s.trainjob`, `cello.k8s.pytorchjob`, `cello.k8s.grpo`.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cello.config import ClusterConfig
from cello.errors import CelloError
from cello.k8s.api import Clients, call

LogFn = Callable[[str], None]
job_logger = logging.getLogger("cello.k8s.job")  # where job logs go without a `log`

# Container waits that are progress, not a problem (everything else is quoted when stuck).
_NORMAL_WAITS = {"ContainerCreating", "PodInitializing"}
_STARTED = {"Running", "Succeeded", "Failed"}


class JobError(CelloError):
    """A cluster job did not complete; the message names the job, the reason and the fix."""

    def __init__(self, msg: str, *, kind: str, name: str, reason: str = "", log_tail: Iterable[str] = ()):
        super().__init__(msg)
        self.kind, self.name, self.reason = kind, name, reason
        self.log_tail = list(log_tail)


class JobFailed(JobError):
    """The job reported Failed."""


class JobDeadlineExceeded(JobError):
    """The job ran past its active deadline; it was deleted."""


class JobVanished(JobError):
    """The job was deleted by someone else while the step waited."""


class PodsPending(JobError):
    """A pod of the job stayed Pending too long; the job was deleted."""


@dataclass(frozen=True)
class State:
    """Where a job stands: running, or done (ok or failed, with the reason and message)."""

    done: bool
    ok: bool = False
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class JobOutcome:
    """A job that completed."""

    kind: str
    name: str
    namespace: str
    reattached: bool  # True: the job existed already (a restarted step), nothing new was created
    elapsed_s: float  # time this step waited
    log_tail: list[str] = field(default_factory=list)


class Workload(Protocol):
    """What the wait loop needs from a job kind (reads retry transient errors themselves)."""

    kind: str
    name: str
    namespace: str
    pod_selector: str  # label selector of the job's pods
    log_container: str  # node 0's container whose log is streamed and quoted

    def read(self) -> dict[str, Any] | None: ...  # the object as the API returns it; None: gone

    def state(self, obj: dict[str, Any]) -> State: ...

    def is_node0(self, pod: Any) -> bool: ...

    def follow_logs(self, pod_name: str) -> Iterator[str]: ...

    def delete(self) -> None: ...


def state_from_conditions(obj: dict[str, Any], *, complete: str, failed: str = "Failed") -> State:
    """State from `status.conditions` (TrainJob: Complete/Failed; PyTorchJob: Succeeded/Failed)."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == failed:
            return State(done=True, ok=False, reason=cond.get("reason") or "", message=cond.get("message") or "")
        if cond.get("type") == complete:
            return State(done=True, ok=True, reason=cond.get("reason") or "", message=cond.get("message") or "")
    return State(done=False)


def created_at(obj: dict[str, Any]) -> float | None:
    """metadata.creationTimestamp as a UNIX time (None when absent)."""
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    if isinstance(stamp, dt.datetime):
        return stamp.timestamp()
    return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- pods
def _statuses(pod: Any) -> list[Any]:
    status = pod.status
    if status is None:
        return []
    return [*(status.init_container_statuses or []), *(status.container_statuses or [])]


def is_stuck_pending(pod: Any) -> bool:
    """Pending with none of its containers started (a running native sidecar counts as started)."""
    if pod.status is None or pod.status.phase != "Pending":
        return False
    return not any(s.state and (s.state.running or s.state.terminated) for s in _statuses(pod))


def _pending_since(pod: Any, first_seen: dict[str, float], now: float) -> float:
    stamp = pod.metadata.creation_timestamp
    return stamp.timestamp() if stamp is not None else first_seen.setdefault(pod.metadata.name, now)


def pending_reasons(pod: Any, events: Iterable[Any]) -> list[str]:
    """Why `pod` is Pending: its scheduling condition, container waits and Warning events."""
    reasons: list[str] = []
    for cond in (pod.status.conditions or []) if pod.status else []:
        if cond.type == "PodScheduled" and cond.status != "True":
            reasons.append(f"{cond.reason or 'Unschedulable'}: {cond.message or 'not scheduled'}")
    for s in _statuses(pod):
        waiting = s.state.waiting if s.state else None
        if waiting and waiting.reason not in _NORMAL_WAITS:
            reasons.append(f"container {s.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": "))
    for event in events:
        if event.type == "Warning":
            reasons.append(f"{event.reason}: {event.message}")
    unique = list(dict.fromkeys(r.strip() for r in reasons if r.strip()))
    return unique[-5:] or ["no scheduling condition, container state or Warning event explains it yet"]


def pod_ending(pod: Any) -> str:
    """How a finished pod's containers ended, e.g. 'container node: OOMKilled (exit 137)'."""
    parts = []
    for s in _statuses(pod):
        term = s.state.terminated if s.state else None
        if term and term.exit_code:
            detail = f": {term.message.strip()[:300]}" if term.message else ""
            parts.append(f"container {s.name}: {term.reason or 'Error'} (exit {term.exit_code}){detail}")
    if pod.status and pod.status.reason:
        parts.append(f"{pod.status.reason}: {pod.status.message or ''}".rstrip(": "))
    return "; ".join(parts)


# ---------------------------------------------------------------- logs
class LogFollower:
    """Reads a log stream on a daemon thread; `drain(log)` hands the lines over in the caller's thread."""

    def __init__(self, source: Callable[[], Iterator[str]], *, keep: int, name: str):
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.tail: collections.deque[str] = collections.deque(maxlen=max(keep, 1))
        self.error: BaseException | None = None
        self._source = source
        self.thread = threading.Thread(target=self._run, name=f"logs-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for line in self._source():
                text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
                self._lines.put(text)
                self.tail.append(text)
        except Exception as exc:  # noqa: BLE001 - a broken log stream must not fail the step
            self.error = exc

    def drain(self, log: LogFn) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            log(line)

    def finish(self, log: LogFn, timeout: float) -> None:
        self.thread.join(timeout)
        self.drain(log)


def log_tail(api: Clients, job: Workload, pod_name: str, lines: int, cfg: ClusterConfig) -> list[str]:
    """The last `lines` log lines of `pod_name` (empty when the pod or its log is gone)."""
    if lines <= 0:
        return []
    try:
        text = call(api.core.read_namespaced_pod_log, pod_name, job.namespace, container=job.log_container,
                    tail_lines=lines, what=f"read the log of pod {job.namespace}/{pod_name}",
                    retries=cfg.api_retries, missing_ok=True)
    except CelloError:
        return []
    return (text or "").splitlines()[-lines:]


# ---------------------------------------------------------------- the loop
def _list_pods(api: Clients, namespace: str, selectors: Iterable[str], cfg: ClusterConfig) -> list[Any]:
    pods = []
    for sel in selectors:
        found = call(api.core.list_namespaced_pod, namespace, label_selector=sel,
                     what=f"list pods in {namespace} ({sel})", retries=cfg.api_retries)
        pods.extend(found.items)
    return pods


def _events(api: Clients, namespace: str, pod_name: str, cfg: ClusterConfig) -> list[Any]:
    found = call(api.core.list_namespaced_event, namespace,
                 field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod_name}",
                 what=f"list events of pod {namespace}/{pod_name}", retries=cfg.api_retries)
    items = [e for e in found.items if e.involved_object is None or e.involved_object.name == pod_name]
    epoch = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return sorted(items, key=lambda e: e.last_timestamp or e.event_time or e.first_timestamp or epoch)


def _delete(job: Workload, log: LogFn) -> None:
    try:
        job.delete()
        log(f"deleted {job.kind} {job.namespace}/{job.name}")
    except CelloError as exc:
        log(f"could not delete {job.kind} {job.namespace}/{job.name}: {exc}")


def wait_for(
    job: Workload,
    api: Clients,
    *,
    cfg: ClusterConfig,
    log: LogFn | None = None,
    reattached: bool = False,
    companions: Iterable[str] = (),
) -> JobOutcome:
    """Block until `job` completes; raise a `JobError` for any other ending (see the module doc).

    `companions`: label selectors of other pods the job needs (GRPO's rollout server), held to
    the same Pending timeout.
    """
    log = log or job_logger.info
    what = f"{job.kind} {job.namespace}/{job.name}"
    began = time.monotonic()
    first_seen: dict[str, float] = {}
    follower: LogFollower | None = None
    followed = ""
    try:
        while True:
            obj = job.read()
            if obj is None:
                msg = (f"{what} disappeared while this step waited on it (deleted by someone or something "
                       "else: kubectl delete, a TTL, a cleanup); nothing is left to wait for. Rerun the step.")
                raise JobVanished(msg, kind=job.kind, name=job.name, reason="Vanished")
            now = time.time()
            state = job.state(obj)
            pods = _list_pods(api, job.namespace, [job.pod_selector, *companions], cfg)
            node0 = next((p for p in pods if job.is_node0(p) and p.status and p.status.phase in _STARTED), None)
            if node0 is not None and node0.metadata.name != followed:
                followed = node0.metadata.name
                follower = LogFollower(lambda name=followed: job.follow_logs(name), keep=cfg.log_tail_lines,
                                       name=followed)
            if follower is not None:
                follower.drain(log)

            if state.done:
                if follower is not None:
                    follower.finish(log, timeout=max(2.0, 2 * cfg.poll_interval_s))
                tail = list(follower.tail) if follower else []
                if state.ok:
                    return JobOutcome(job.kind, job.name, job.namespace, reattached, time.monotonic() - began, tail)
                raise _failure(job, api, obj, state, pods, tail, cfg, log)

            start = created_at(obj) or now - (time.monotonic() - began)
            if now - start > cfg.active_deadline_s:
                _delete(job, log)
                msg = (f"{what} ran past its deadline (cluster.active_deadline_s={cfg.active_deadline_s}s) and was "
                       "deleted. Raise cluster.active_deadline_s, or train for fewer steps.")
                raise JobDeadlineExceeded(msg, kind=job.kind, name=job.name, reason="DeadlineExceeded",
                                          log_tail=follower.tail if follower else ())
            _check_pending(job, api, pods, first_seen, start, now, cfg, log)
            time.sleep(cfg.poll_interval_s)
    except (KeyboardInterrupt, SystemExit):
        log(f"step cancelled: deleting {what}")
        _delete(job, log)
        raise


def _check_pending(job: Workload, api: Clients, pods: list[Any], first_seen: dict[str, float],
                   start: float, now: float, cfg: ClusterConfig, log: LogFn) -> None:
    what = f"{job.kind} {job.namespace}/{job.name}"
    if not pods and now - start > cfg.pending_timeout_s:
        _delete(job, log)
        msg = (f"{what} has no pods {now - start:.0f}s after it was created (cluster.pending_timeout_s="
               f"{cfg.pending_timeout_s}); its controller did not start it: check that the training operator "
               f"runs and the queue or quota admits it "
               f"(kubectl describe -n {job.namespace} {job.kind.lower()} {job.name}). The job was deleted.")
        raise PodsPending(msg, kind=job.kind, name=job.name, reason="NoPods")
    for pod in pods:
        if not is_stuck_pending(pod):
            continue
        waited = now - _pending_since(pod, first_seen, now)
        if waited <= cfg.pending_timeout_s:
            continue
        reasons = pending_reasons(pod, _events(api, job.namespace, pod.metadata.name, cfg))
        _delete(job, log)
        msg = (f"pod {pod.metadata.name} of {what} has been Pending for {waited:.0f}s (cluster.pending_timeout_s="
               f"{cfg.pending_timeout_s}): " + "; ".join(reasons) + ". The job was deleted. Free or add GPU nodes, "
               "lower cluster.num_nodes / gpus_per_node, or fix cluster.node_selector / tolerations.")
        raise PodsPending(msg, kind=job.kind, name=job.name, reason="Pending")


def _failure(job: Workload, api: Clients, obj: dict[str, Any], state: State, pods: list[Any],
             streamed: list[str], cfg: ClusterConfig, log: LogFn) -> JobError:
    what = f"{job.kind} {job.namespace}/{job.name}"
    node0 = next((p for p in pods if job.is_node0(p)), None)
    tail = log_tail(api, job, node0.metadata.name, cfg.log_tail_lines, cfg) if node0 is not None else []
    if not tail and cfg.log_tail_lines:  # the pod or its log is gone: what was streamed
        tail = streamed[-cfg.log_tail_lines:]
    endings = [f"pod {p.metadata.name}: {e}" for p in pods if (e := pod_ending(p))]
    reason = f"{state.reason}: {state.message}".strip(": ") or "no reason given"
    lines = [f"{what} failed: {reason}", *endings]
    if tail:
        lines.append(f"last {len(tail)} log lines of node 0 ({node0.metadata.name if node0 else '?'}):")
        lines.extend("  " + t for t in tail)
    if state.reason == "DeadlineExceeded":
        _delete(job, log)
        lines.append("It ran past its deadline and was deleted; "
                     "raise cluster.active_deadline_s or train for fewer steps.")
        return JobDeadlineExceeded("\n".join(lines), kind=job.kind, name=job.name, reason=state.reason, log_tail=tail)
    lines.append(f"The job is kept for inspection (kubectl describe -n {job.namespace} {job.kind.lower()} {job.name}); "
                 "the pipeline's exit handler deletes it.")
    return JobFailed("\n".join(lines), kind=job.kind, name=job.name, reason=state.reason, log_tail=tail)
