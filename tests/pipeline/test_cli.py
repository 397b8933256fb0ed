"""`cello pipeline compile|params|run|submit`: the errors a user can make, and submit against a
real HTTP server speaking the KFP v2beta1 API on loopback (healthz, experiments, runs)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from cello.cli import main
from cello.pipeline.compiler import load_ir

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "pipelines" / "cello.yaml"


class FakeKFP(BaseHTTPRequestHandler):
    """The endpoints kfp.Client uses to start a run; records what it was sent."""

    calls: list[tuple[str, str, dict]] = []
    experiments: dict[str, dict] = {}

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        self.calls.append(("GET", url.path, {**parse_qs(url.query), "auth": self.headers.get("Authorization")}))
        if url.path == "/apis/v2beta1/healthz":
            return self._send(200, {"multi_user": False})
        if url.path == "/apis/v2beta1/experiments":
            pred = json.loads(parse_qs(url.query)["filter"][0])["predicates"][0]
            wanted = pred.get("string_value") or pred.get("stringValue")
            found = [e for e in self.experiments.values() if e["display_name"] == wanted]
            return self._send(200, {"experiments": found, "total_size": len(found)} if found else {})
        return self._send(404, {"error": f"no route {url.path}"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.calls.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            exp = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[exp["experiment_id"]] = exp
            return self._send(200, exp)
        if self.path == "/apis/v2beta1/runs":
            return self._send(200, {**body, "run_id": "run-123", "state": "PENDING"})
        return self._send(404, {"error": f"no route {self.path}"})


@pytest.fixture
def kfp_server():
    FakeKFP.calls, FakeKFP.experiments = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_submit_sends_the_compiled_pipeline_with_parameters_and_overrides(kfp_server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "secret-token")
    code = main(["pipeline", "submit", "--host", kfp_server, "--package", str(PACKAGE), "--param", "num_nodes=2",
                 "--param", "revision=v1.2.3", "--param", "repo=https://git.example.com/cello.git",
                 "--set", "gate.min_accuracy=0.3", "--params", str(REPO / "params.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{kfp_server}/#/runs/details/run-123" in out
    runs = [body for method, path, body in FakeKFP.calls if (method, path) == ("POST", "/apis/v2beta1/runs")]
    assert len(runs) == 1
    run = runs[0]
    params = run["runtime_config"]["parameters"]
    assert params["num_nodes"] == 2 and params["revision"] == "v1.2.3"
    assert params["overrides"] == {"gate.min_accuracy": 0.3}
    assert run["service_account"] == "cello-pipeline"
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "cello"
    assert "kubernetes" in run["pipeline_spec"]["platform_spec"]["platforms"]  # PVC, GPUs, secrets travel too
    assert run["experiment_id"] == "exp-1"
    assert any(c[2].get("auth") == "Bearer secret-token" for c in FakeKFP.calls if c[0] == "GET")


def test_submit_unknown_parameter_is_refused_before_any_request(kfp_server, capsys):
    code = main(["pipeline", "submit", "--host", kfp_server, "--package", str(PACKAGE), "--param", "num_node=2"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown pipeline parameter(s) ['num_node']" in err and "num_nodes" in err
    assert not [c for c in FakeKFP.calls if c[0] == "POST"]


def test_submit_to_an_unreachable_host_says_which(capsys):
    code = main(["pipeline", "submit", "--host", "http://127.0.0.1:9", "--package", str(PACKAGE)])
    err = capsys.readouterr().err
    assert code == 2 and "could not submit to Kubeflow Pipelines at http://127.0.0.1:9" in err


def test_run_needs_local_and_rejects_unknown_parameters(capsys):
    assert main(["pipeline", "run", "--profile", "local"]) == 2
    assert "needs --local" in capsys.readouterr().err
    assert main(["pipeline", "run", "--local", "--param", "gpus=3", "--repo", str(REPO)]) == 2
    assert "unknown pipeline parameter(s) ['gpus']" in capsys.readouterr().err


def test_bad_override_names_the_setting(tmp_path, capsys):
    from cello.config import load_params
    from cello.errors import ConfigError

    with pytest.raises(ConfigError, match="override 'gat.min_accuracy': no such setting"):
        load_params(REPO / "params.yaml", overrides={"gat.min_accuracy": 0})
    with pytest.raises(ConfigError, match="gate.min_acc"):
        load_params(REPO / "params.yaml", overrides={"gate.min_acc": 0})
    p = load_params(REPO / "params.yaml", profile="local", overrides={"gate.min_accuracy": 0,
                                                                      "train.grpo.max_steps": 3})
    assert p.gate.min_accuracy == 0 and p.train.grpo.max_steps == 3 and p.pipeline.base_model == "tiny"


def test_without_kfp_the_error_names_the_extra(monkeypatch, capsys, tmp_path):
    import sys

    for name in [m for m in sys.modules if m == "kfp" or m.startswith("kfp.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kfp", None)  # import kfp -> ImportError
    assert main(["pipeline", "compile", "-o", str(tmp_path / "x.yaml"), "--params", str(REPO / "params.yaml")]) == 2
    assert "pip install 'cello[pipeline]'" in capsys.readouterr().err


def test_params_lists_every_parameter(capsys):
    assert main(["pipeline", "params", "--params", str(REPO / "params.yaml")]) == 0
    out = capsys.readouterr().out
    spec, _ = load_ir(PACKAGE)
    for name in spec["root"]["inputDefinitions"]["parameters"]:
        assert name in out


@pytest.mark.parametrize("sub", ["compile", "params", "run", "submit"])
def test_help(sub, capsys):
    assert main(["pipeline", sub, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out
