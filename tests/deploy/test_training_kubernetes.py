"""The Kubernetes launcher: every manifest it emits passes kubernetes-validate --strict (offline schemas;
no API server runs here), and submission goes through the kubernetes client's BatchV1Api / CoreV1Api
to a loopback HTTP server that records the calls (the HTTP layer is faked, not our code)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import free_port
from training.config import CaPOConfig, KubernetesConfig, SFTConfig
from training.launch import kubernetes as kube

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")


def cfg(**kube_fields) -> CaPOConfig:
    return CaPOConfig(model="s3://parrot/runs/sft-1/model", dataset="s3://parrot/datasets/capo.jsonl",
                      output="s3://parrot/runs/capo-1", metrics_port=9400,
                      kubernetes=KubernetesConfig(image="registry.local/parrot:1.0", namespace="ml", **kube_fields))


VARIANTS = {
    "cpu-single": {},
    "gpu-single": {"gpus_per_node": 4, "node_selector": {"nvidia.com/gpu.product": "H100"},
                   "tolerations": ["nvidia.com/gpu:NoSchedule", "dedicated=training:NoExecute"], "s3_secret": "parrot-s3"},
    "multi-node": {"nodes": 3, "gpus_per_node": 8, "s3_secret": "parrot-s3", "env": {"NCCL_DEBUG": "WARN"},
                   "service_account": "parrot-trainer"},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_is_valid_kubernetes(variant):
    docs = kube.to_dicts(kube.build_manifests(cfg(**VARIANTS[variant])))
    for version in ("1.27.0", kv.latest_version()):
        for doc in docs:
            kv.validate(doc, version, strict=True)


def test_single_node_job():
    [job] = kube.to_dicts(kube.build_manifests(cfg(**VARIANTS["gpu-single"])))
    spec = job["spec"]
    assert (job["kind"], job["metadata"]["name"], job["metadata"]["namespace"]) == ("Job", "parrot-train-capo-capo-1", "ml")
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"], spec["completions"]) == (2, 86400, 1)
    assert "completionMode" not in spec
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["torchrun", "--standalone", "--nproc-per-node=4", "--no-python", "parrot", "train", "capo"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                  {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoExecute"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["PARROT_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "parrot-s3", "key": "PARROT_S3_SECRET_KEY"}
    sent = json.loads(env["PARROT_TRAIN_CONFIG"]["value"])
    assert sent["launcher"] == "local" and sent["dataset"] == "s3://parrot/datasets/capo.jsonl" and "kubernetes" not in sent
    # The pod's config is loadable by the CLI as is.
    CaPOConfig(**sent)
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9400"


def test_multi_node_is_an_indexed_job_with_headless_service_and_torchrun_rendezvous():
    svc, job = kube.to_dicts(kube.build_manifests(cfg(**VARIANTS["multi-node"])))
    name = job["metadata"]["name"]
    assert svc["kind"] == "Service" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/instance": name}
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] and pod["serviceAccountName"] == "parrot-trainer"
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == name
    c = pod["containers"][0]
    assert c["command"][:6] == ["torchrun", "--nnodes=3", "--nproc-per-node=8", "--node-rank=$(JOB_COMPLETION_INDEX)",
                                f"--master-addr={name}-0.{svc['metadata']['name']}", "--master-port=29500"]
    env = {e["name"]: e for e in c["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["NCCL_DEBUG"]["value"] == "WARN"


def test_cli_dry_run_prints_the_manifests():
    from parrot.cli import app

    out = CliRunner().invoke(app, ["train", "sft", "--launcher", "kubernetes", "--dry-run", "--dataset", "s3://b/d.jsonl",
                                   "--output", "s3://b/runs/Run_One", "--kubernetes-nodes", "2",
                                   "--kubernetes-node-selector", "pool=gpu,zone=a", "--kubernetes-tolerations",
                                   "gpu:NoSchedule"])
    assert out.exit_code == 0, out.output
    docs = list(yaml.safe_load_all(out.output))
    assert [d["kind"] for d in docs] == ["Service", "Job"]
    assert docs[1]["metadata"]["name"] == "parrot-train-sft-run-one"
    assert docs[1]["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu", "zone": "a"}
    for doc in docs:
        kv.validate(doc, kv.latest_version(), strict=True)


class Recorder(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Recorder.calls.append((self.command, self.path, body))
        data = json.dumps({**body, "metadata": {**body["metadata"], "uid": "u-1"}}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_submit_creates_service_then_job_through_the_client():
    from kubernetes import client as k8s

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.calls = []
    try:
        conf = k8s.Configuration(host=f"http://127.0.0.1:{port}")
        objects = kube.build_manifests(cfg(**VARIANTS["multi-node"]))
        with k8s.ApiClient(conf) as api:
            created = kube.submit(objects, api_client=api)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    name = objects[1].metadata.name
    assert created == [f"Service/{name}-workers", f"Job/{name}"]
    assert [(m, p) for m, p, _ in Recorder.calls] == [("POST", "/api/v1/namespaces/ml/services"),
                                                        ("POST", "/apis/batch/v1/namespaces/ml/jobs")]
    assert Recorder.calls[1][2] == kube.to_dicts(objects)[1]


def test_job_names_are_dns_labels():
    long = SFTConfig(output="s3://b/runs/" + "X_" * 40, kubernetes=KubernetesConfig())
    name = kube.job_name(long)
    assert len(name) <= 52 and name == name.lower() and not name.endswith("-")
