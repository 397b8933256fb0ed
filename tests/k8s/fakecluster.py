"""A Kubernetes cluster double: kmock's API emulator over real HTTP on loopback, what a real API
server adds and kmock leaves out, and small controllers that move objects through their real
status shapes. Code under test reaches it through a kubeconfig, as it would reach a cluster.

API server behaviour added to kmock 0.8:
- label selectors (`a=b`, `a!=b`, `a in (x, y)`, `a notin (...)`, `a`, `!a`) and field selectors
  (`involvedObject.name=...`) on lists (kmock returns every object);
- metadata.namespace, creationTimestamp, uid, resourceVersion and generation on create, and
  generation + 1 when a patch changes the spec (KServe's readiness is per generation);
- pod logs (`pods/log`, `tail_lines`, `follow=true` streamed until the pod ends), with 400 for
  a container the pod does not have, as a real kubelet answers.

Controllers (one asyncio task, every 20 ms), scripted per object name by a `Plan`:
- TrainJob (trainer.kubeflow.org/v1alpha1): JobSet-style pods `<name>-node-<i>-0-xxxxx` with the
  jobset labels, conditions Complete / Failed (reason, message);
- PyTorchJob (kubeflow.org/v1): pods `<name>-master-0`, `<name>-worker-<i>`, conditions
  Succeeded / Failed;
- bare pods that Cello creates (GRPO): phases Pending -> Running -> Succeeded / Failed, a native
  sidecar that is running before the main container starts;
- InferenceService: Ready per generation, status.url / address.url, canaryStatuses, or
  PredictorReady False with ModelLoadFailed for a model URI listed in `never_ready`.
Deleting a job deletes its pods (ownerReferences garbage collection).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import kmock
import yaml

NS = "cello"
TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"
PYTORCHJOBS = "kubeflow.org/v1/pytorchjobs"
ISVCS = "serving.kserve.io/v1beta1/inferenceservices"
PODS, EVENTS, SERVICES, CONFIGMAPS = "v1/pods", "v1/events", "v1/services", "v1/configmaps"
NETPOLS = "networking.k8s.io/v1/networkpolicies"
RESOURCES = [TRAINJOBS, PYTORCHJOBS, ISVCS, PODS, EVENTS, SERVICES, CONFIGMAPS, NETPOLS,
             "trainer.kubeflow.org/v1alpha1/clustertrainingruntimes", "trainer.kubeflow.org/v1alpha1/trainingruntimes"]

# The ClusterTrainingRuntime k8s/ installs, in the shape the Kubeflow SDK reads (torch, `node`).
RUNTIME = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1",
    "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "cello-torch", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {"spec": {"replicatedJobs": [{
            "name": "node",
            "template": {
                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "node", "image": "ghcr.io/cello-ml/cello-train:0.1.0", "command": ["torchrun"]},
                ]}}},
            },
        }]}},
    },
}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [t.strip() for t in [*terms, cur] if t.strip()]


def label_match(labels: dict[str, str], selector: str) -> bool:
    for term in _split_terms(selector):
        m = re.match(r"^(\S+)\s+(in|notin)\s+\((.*)\)$", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            ok = (labels.get(m.group(1)) in values) == (m.group(2) == "in")
        elif "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key.strip()) != value.strip()
        elif "=" in term:
            key, value = term.split("=", 1)
            ok = labels.get(key.strip()) == value.lstrip("=").strip()
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def field_match(obj: dict[str, Any], selector: str) -> bool:
    for term in _split_terms(selector):
        path, _, value = term.partition("=")
        cur: Any = obj
        for part in path.strip().split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if str(cur) != value.lstrip("=").strip():
            return False
    return True


class FakeAPI(kmock.KubernetesEmulator):
    """kmock's emulator plus selectors and the metadata a real API server sets."""

    async def _handle(self, request):  # noqa: D401 - kmock's hook
        data = request.data if isinstance(request.data, dict) else None
        if request.resource is not None and data is not None:
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta.setdefault("namespace", request.namespace)
                meta.setdefault("creationTimestamp", now_iso())
                meta.setdefault("uid", str(uuid.uuid4()))
                meta["generation"] = 1
                meta["resourceVersion"] = "1"
            elif request.action == kmock.action.UPDATE and data.get("spec"):  # a spec change: a new generation
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    current = self.objects[key].raw.get("metadata", {})
                    meta["generation"] = int(current.get("generation", 1)) + 1
                    meta["resourceVersion"] = str(int(current.get("resourceVersion", "1")) + 1)
        return await super()._handle(request)

    async def _serve_list(self, request):
        payload = await super()._serve_list(request)
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        payload["items"] = [
            item for item in payload["items"]
            if (not labels or label_match((item.get("metadata") or {}).get("labels") or {}, labels))
            and (not fields or field_match(item, fields))
        ]
        return payload


@dataclass
class Plan:
    """What the controller does with one job or pod: start, log, then end as `outcome`."""

    outcome: str = "complete"  # complete | fail | pending | hang | vanish | deadline
    start_after: float = 0.05  # seconds Pending before Running
    run_for: float = 0.4  # seconds Running before the outcome
    logs: list[str] = field(default_factory=lambda: [f"step {i} loss {2.0 - i / 10:.2f}" for i in range(8)])
    reason: str = "FailedJobs"
    message: str = "jobset failed: job node-0 reached its backoff limit"
    exit_code: int = 1


@dataclass
class Cluster:
    """The double and its controllers; tests set `plans[name]` and read `objects` / `calls()`."""

    api: FakeAPI
    url: str
    plans: dict[str, Plan] = field(default_factory=dict)
    default: Plan = field(default_factory=Plan)
    logs: dict[str, list[str]] = field(default_factory=dict)
    never_ready: set[str] = field(default_factory=set)  # model URIs that fail to load
    stalled: set[str] = field(default_factory=set)  # model URIs the KServe controller never reports on
    on_ready: Any = None  # callback(isvc dict) when an InferenceService becomes Ready
    serving_url: str = "http://127.0.0.1:9"
    closing: bool = False  # set at teardown: open log streams end
    _state: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------ objects
    @staticmethod
    def key(resource: str, ns: str | None, name: str) -> tuple[Any, str | None, str]:
        return (kmock.resource(resource), ns, name)  # kmock keys by resource objects, not strings

    def get(self, resource: str, name: str, ns: str | None = NS) -> dict[str, Any] | None:
        key = self.key(resource, ns, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        return self.api.objects[key].raw

    def names(self, resource: str) -> list[str]:
        wanted = kmock.resource(resource)
        return [key[2] for key, obj in self.api.objects.items() if not obj.deleted and key[0] == wanted]

    def put(self, resource: str, obj: dict[str, Any], ns: str | None = NS) -> None:
        name = obj["metadata"]["name"]
        meta = obj["metadata"]
        if ns is not None:
            meta.setdefault("namespace", ns)
        meta.setdefault("creationTimestamp", now_iso())
        meta.setdefault("uid", str(uuid.uuid4()))
        key = self.key(resource, ns, name)
        if key in self.api.objects and self.api.objects[key].deleted:
            self.api.objects[key].create(obj)
        else:
            self.api.objects[key] = obj

    def patch(self, resource: str, name: str, changes: dict[str, Any], ns: str | None = NS) -> None:
        self.api.objects[self.key(resource, ns, name)].patch(changes)

    def delete(self, resource: str, name: str, ns: str | None = NS) -> None:
        key = self.key(resource, ns, name)
        if key in self.api.objects and not self.api.objects[key].deleted:
            self.api.objects[key].delete()

    def event(self, pod: str, reason: str, message: str) -> None:
        self.put(EVENTS, {"apiVersion": "v1", "kind": "Event",
                          "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:8]}"},
                          "involvedObject": {"kind": "Pod", "name": pod, "namespace": NS},
                          "type": "Warning", "reason": reason, "message": message,
                          "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1})

    def calls(self) -> list[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) of every API request made so far."""
        out = []
        for req in list(self.api):
            if req.resource is None:
                continue
            resource = req.resource.plural + (f"/{req.subresource}" if req.subresource else "")
            verb = {"GET": "list" if req.name is None else "get", "POST": "create", "PATCH": "patch",
                    "PUT": "update", "DELETE": "delete" if req.name else "deletecollection"}[req.method.value]
            if req.params.get("watch") in ("true", "True", "1"):
                verb = "watch"
            out.append((req.resource.group, resource, verb))
        return out

    # ------------------------------------------------------------ pod logs (kubelet)
    async def serve_log(self, request):
        pod = self.get(PODS, request.name, request.namespace)
        if pod is None:
            raise kmock.KubernetesObjectNotFoundError()
        container = request.params.get("container")
        names = [c["name"] for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])]
        if container and container not in names:
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message=f"container {container} is not valid for pod {request.name}")
        lines = self.logs.setdefault(request.name, [])
        if request.params.get("follow") not in ("true", "True"):
            tail = request.params.get("tailLines")
            shown = lines[-int(tail):] if tail else lines
            return "".join(f"{line}\n" for line in shown).encode()
        return self._follow(request.name, request.namespace)

    async def _follow(self, name: str, ns: str):
        sent = 0
        while True:
            lines = self.logs.get(name, [])
            while sent < len(lines):
                yield f"{lines[sent]}\n".encode()
                sent += 1
            pod = self.get(PODS, name, ns)
            if self.closing or pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------ controllers
    def plan(self, name: str) -> Plan:
        return self.plans.get(name, self.default)

    async def run_controllers(self) -> None:
        while True:
            loop_now = asyncio.get_running_loop().time()
            for resource, kind in ((TRAINJOBS, "TrainJob"), (PYTORCHJOBS, "PyTorchJob")):
                for name in self.names(resource):
                    self._tick_job(resource, kind, name, loop_now)
            for name in self.names(PODS):
                pod = self.get(PODS, name)
                labels = pod["metadata"].get("labels") or {}
                if labels.get("app.kubernetes.io/managed-by") == "cello" and not pod["metadata"].get("ownerReferences"):
                    self._tick_bare_pod(name, pod, loop_now)
            self._collect_garbage()
            for name in self.names(ISVCS):
                self._tick_isvc(name)
            await asyncio.sleep(0.02)

    def _pod_names(self, kind: str, name: str, obj: dict[str, Any]) -> list[tuple[str, dict[str, str], list[dict]]]:
        spec = obj["spec"]
        if kind == "TrainJob":
            patch = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
            pod_labels = patch["template"]["spec"]["template"]["metadata"]["labels"]
            containers = [{"name": "node", "image": spec["trainer"]["image"], "command": spec["trainer"]["command"]}]
            out = []
            for i in range(spec["trainer"].get("numNodes", 1)):
                labels = {**pod_labels, "jobset.sigs.k8s.io/jobset-name": name,
                          "jobset.sigs.k8s.io/replicatedjob-name": "node",
                          "batch.kubernetes.io/job-completion-index": str(i)}
                out.append((f"{name}-node-{i}-0-{uuid.uuid4().hex[:5]}", labels, containers))
            return out
        out = []
        for rtype, rspec in spec["pytorchReplicaSpecs"].items():
            tmpl = rspec["template"]
            for i in range(rspec.get("replicas", 1)):
                labels = {**tmpl["metadata"]["labels"], "training.kubeflow.org/job-name": name,
                          "training.kubeflow.org/replica-type": rtype.lower(),
                          "training.kubeflow.org/replica-index": str(i)}
                out.append((f"{name}-{rtype.lower()}-{i}", labels, tmpl["spec"]["containers"]))
        return out

    def _tick_job(self, resource: str, kind: str, name: str, loop_now: float) -> None:
        obj = self.get(resource, name)
        st = self._state.setdefault((kind, name), {"t0": loop_now, "phase": "new", "pods": [], "logged": 0})
        plan = self.plan(name)
        t = loop_now - st["t0"]
        if st["phase"] == "new":
            for pod_name, labels, containers in self._pod_names(kind, name, obj):
                self._make_pod(pod_name, labels, containers, owner=(kind, name))
                st["pods"].append(pod_name)
                if plan.outcome == "pending":
                    self._unschedulable(pod_name)
            st["phase"] = "pending"
        elif st["phase"] == "pending" and plan.outcome != "pending" and t >= plan.start_after:
            for pod_name in st["pods"]:
                self._set_phase(pod_name, "Running")
            st["phase"] = "running"
        elif st["phase"] == "running":
            self._log_step(st, st["pods"][0], plan)
            if t >= plan.start_after + plan.run_for:
                self._finish(resource, kind, name, st, plan)

    def _log_step(self, st: dict[str, Any], pod: str, plan: Plan) -> None:
        if st["logged"] < len(plan.logs):
            self.logs.setdefault(pod, []).append(plan.logs[st["logged"]])
            st["logged"] += 1

    def _finish(self, resource: str, kind: str, name: str, st: dict[str, Any], plan: Plan) -> None:
        ok_type = "Complete" if kind == "TrainJob" else "Succeeded"
        if plan.outcome == "complete":
            while st["logged"] < len(plan.logs):
                self._log_step(st, st["pods"][0], plan)
            for pod_name in st["pods"]:
                self._set_phase(pod_name, "Succeeded", exit_code=0)
            self._condition(resource, name, ok_type, "JobsCompleted" if kind == "TrainJob" else "PyTorchJobSucceeded",
                            f"{kind} {name} completed")
        elif plan.outcome == "fail":
            self._set_phase(st["pods"][0], "Failed", exit_code=plan.exit_code, reason="Error")
            self._condition(resource, name, "Failed", plan.reason, plan.message)
        elif plan.outcome == "deadline":
            for pod_name in st["pods"]:
                self._set_phase(pod_name, "Failed", exit_code=137, reason="DeadlineExceeded")
            self._condition(resource, name, "Failed", "DeadlineExceeded",
                            "Job was active longer than specified deadline")
        elif plan.outcome == "vanish":
            self.delete(resource, name)
        else:  # hang: keep running
            return
        st["phase"] = "done"

    def _condition(self, resource: str, name: str, ctype: str, reason: str, message: str) -> None:
        self.patch(resource, name, {"status": {"conditions": [
            {"type": ctype, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now_iso()},
        ]}})

    def _make_pod(self, name: str, labels: dict[str, str], containers: list[dict], *, owner=None,
                  init: list[dict] | None = None) -> None:
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": owner[0], "name": owner[1], "uid": "x",
                                        "controller": True}]
        self.put(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                        "spec": {"containers": containers, **({"initContainers": init} if init else {})},
                        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}})

    def _unschedulable(self, pod: str) -> None:
        msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
        self.patch(PODS, pod, {"status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}]}})
        self.event(pod, "FailedScheduling", msg)

    def _set_phase(self, pod: str, phase: str, *, exit_code: int | None = None, reason: str | None = None,
                   containers: list[str] | None = None) -> None:
        obj = self.get(PODS, pod)
        if obj is None:
            return
        names = containers or [c["name"] for c in obj["spec"]["containers"]]
        if phase == "Running":
            state: dict[str, Any] = {"running": {"startedAt": now_iso()}}
        else:
            state = {"terminated": {"exitCode": exit_code or 0,
                                    "reason": reason or ("Completed" if not exit_code else "Error"),
                                    "finishedAt": now_iso()}}
        statuses = [{"name": n, "ready": phase == "Running", "restartCount": 0, "image": "x", "imageID": "",
                     "started": phase == "Running", "state": state} for n in names]
        status: dict[str, Any] = {"phase": phase, "containerStatuses": statuses}
        if phase == "Failed" and reason == "DeadlineExceeded":
            status.update(reason="DeadlineExceeded",
                          message="Pod was active on the node longer than the specified deadline")
        self.patch(PODS, pod, {"status": status})

    def _tick_bare_pod(self, name: str, pod: dict[str, Any], loop_now: float) -> None:
        st = self._state.setdefault(("Pod", name), {"t0": loop_now, "phase": "new", "pods": [name], "logged": 0})
        labels = pod["metadata"].get("labels") or {}
        plan = self.plan(name)
        t = loop_now - st["t0"]
        main = [c["name"] for c in pod["spec"]["containers"]]
        sidecars = [c["name"] for c in pod["spec"].get("initContainers", []) if c.get("restartPolicy") == "Always"]
        running = {"running": {"startedAt": now_iso()}}
        if st["phase"] == "new":
            if plan.outcome == "pending":
                self._unschedulable(name)
            st["phase"] = "pending"
        elif st["phase"] == "pending" and plan.outcome != "pending" and t >= plan.start_after:
            if sidecars:  # the sidecar runs (startup probe passing) before the main container starts
                self.patch(PODS, name, {"status": {"initContainerStatuses": [
                    {"name": n, "ready": True, "started": True, "restartCount": 0, "image": "x", "imageID": "",
                     "state": running} for n in sidecars]}})
            self._set_phase(name, "Running", containers=main)
            st["phase"] = "running"
        elif st["phase"] == "running" and labels.get("cello.dev/role") != "rollout":
            self._log_step(st, name, plan)
            if t >= plan.start_after + plan.run_for and plan.outcome != "hang":
                ok = plan.outcome == "complete"
                while ok and st["logged"] < len(plan.logs):
                    self._log_step(st, name, plan)
                self._set_phase(name, "Succeeded" if ok else "Failed", exit_code=0 if ok else plan.exit_code,
                                containers=main)
                st["phase"] = "done"

    def _collect_garbage(self) -> None:
        for (kind, name), st in list(self._state.items()):
            if kind == "Pod":
                continue
            resource = TRAINJOBS if kind == "TrainJob" else PYTORCHJOBS
            if self.get(resource, name) is None and st["pods"]:
                for pod in st["pods"]:
                    self.delete(PODS, pod)
                st["pods"] = []
                st["phase"] = "gone"

    def _tick_isvc(self, name: str) -> None:
        obj = self.get(ISVCS, name)
        gen = obj["metadata"].get("generation", 1)
        status = obj.get("status") or {}
        if status.get("observedGeneration") == gen:
            return
        spec = obj["spec"]
        uris = [spec["predictor"]["model"]["storageUri"]] + [c["predictor"]["model"]["storageUri"]
                                                             for c in spec.get("canary", [])]
        if any(u in self.stalled for u in uris):
            return
        bad = [u for u in uris if u in self.never_ready]
        if bad:
            conditions = [
                {"type": "PredictorReady", "status": "False", "reason": "ModelLoadFailed",
                 "message": f"model {bad[0]} failed to load: CUDA out of memory", "lastTransitionTime": now_iso()},
                {"type": "Ready", "status": "False", "reason": "ModelLoadFailed",
                 "message": "Predictor not ready", "lastTransitionTime": now_iso()},
            ]
            self.patch(ISVCS, name, {"status": {"observedGeneration": gen, "conditions": conditions,
                                                "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                                                                "states": {"activeModelState": "FailedToLoad"}}}})
            return
        canaries = [{"name": c["predictor"].get("name", "canary"), "ready": True, "trafficPercent": c["trafficPercent"]}
                    for c in spec.get("canary", [])]
        self.patch(ISVCS, name, {"status": {
            "observedGeneration": gen, "url": self.serving_url, "address": {"url": self.serving_url},
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now_iso()}
                           for t in ("IngressReady", "PredictorReady", "Ready")],
            "modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"}},
            "canaryStatuses": canaries or None,
        }})
        if self.on_ready is not None:
            self.on_ready(self.get(ISVCS, name))


def kubeconfig(url: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "step", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "step", "namespace": NS}}],
    })


@contextlib.asynccontextmanager
async def running_cluster(tmp_path, monkeypatch):
    """Start the double on loopback, point KUBECONFIG at it, run the controllers; yield the Cluster."""
    async with FakeAPI() as api, kmock.Server(api):
        for resource in RESOURCES:
            api.resources[resource] = {}
        cluster = Cluster(api=api, url=str(api.url).rstrip("/"))
        api["get", kmock.resource(PODS), kmock.subresource("log")] << cluster.serve_log
        cluster.put("trainer.kubeflow.org/v1alpha1/clustertrainingruntimes", dict(RUNTIME), ns=None)
        cluster.put(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "kubeflow-trainer-public"},
                                 "data": {"kubeflow_trainer_version": "2.3.0"}}, ns="kubeflow-system")
        path = tmp_path / "kubeconfig"
        path.write_text(kubeconfig(cluster.url))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        task = asyncio.create_task(cluster.run_controllers())
        try:
            yield cluster
        finally:
            cluster.closing = True
            await asyncio.sleep(0.05)  # let open log streams see it
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
