"""The admission rules the chart depends on, as KServe's and Knative's webhooks apply them.

Schemas cannot see these (tests/deploy/test_chart.py runs them over every documented configuration):
- KServe's deployment-mode names by release: RawDeployment / Serverless before 0.16 (Standard and
  Knative are unknown there and the controller silently falls back to the cluster default); 0.16
  knows only Standard / Knative; 0.17 and later accept both spellings.
- KServe's autoscaling metrics by mode: cpu or memory (HPA) in RawDeployment / Standard, concurrency
  or rps in Serverless / Knative ("[cpu] is not a supported metric").
- Knative's pod-spec field mask (knative.dev/serving pkg/apis/serving/fieldmask.go): KServe copies the
  predictor pod spec into the Knative Service; terminationGracePeriodSeconds (among others) is never
  allowed, and securityContext, tolerations, nodeSelector and affinity only with their feature flags
  (config-features); probes on a second container need multi-container-probing.
- Serverless metrics: with enable-prometheus-scraping KServe points prometheus.io/port at queue-proxy,
  so the model's own metrics are scraped only with enable-metric-aggregation.
- A ServiceMonitor scrapes every Service it selects: two Services over the same pods and port (a
  headless twin) scrape each pod twice.
"""

from __future__ import annotations

RAW, KNATIVE = ("RawDeployment", "Standard"), ("Serverless", "Knative")
HPA_METRICS, KNATIVE_METRICS = ("cpu", "memory"), ("concurrency", "rps")
KNATIVE_REFUSED_POD_FIELDS = ("terminationGracePeriodSeconds", "initContainers", "hostNetwork", "hostPID", "hostIPC",
                              "priorityClassName", "dnsPolicy", "nodeName", "shareProcessNamespace")
KNATIVE_FLAGGED_POD_FIELDS = {
    "securityContext": "kubernetes.podspec-securitycontext",
    "tolerations": "kubernetes.podspec-tolerations",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "affinity": "kubernetes.podspec-affinity",
}
MULTI_CONTAINER_PROBING = "multi-container-probing"


def accepted_modes(version: str) -> tuple[str, ...]:
    minor = int(version.split(".")[1])
    if minor < 16:
        return ("RawDeployment", "Serverless")
    if minor == 16:
        return ("Standard", "Knative")
    return RAW + KNATIVE


def inference_service_errors(isvc: dict, version: str, features: frozenset[str] = frozenset()) -> list[str]:
    """What KServe (at ``version``) and Knative (with ``features`` on) would refuse or silently lose."""
    name = isvc["metadata"]["name"]
    annotations = isvc["metadata"].get("annotations", {})
    mode = annotations.get("serving.kserve.io/deploymentMode", "Serverless")
    errors = []
    if mode not in accepted_modes(version):
        errors.append(f"{name}: KServe {version} does not know deployment mode {mode} "
                      f"(accepts {', '.join(accepted_modes(version))})")
    predictor = isvc["spec"]["predictor"]
    metric = predictor.get("scaleMetric")
    knative = mode in KNATIVE
    if metric and metric not in (KNATIVE_METRICS if knative else HPA_METRICS):
        errors.append(f"{name}: [{metric}] is not a supported metric in {mode} mode")
    if not knative:
        return errors
    for field in KNATIVE_REFUSED_POD_FIELDS:
        if field in predictor:
            errors.append(f"{name}: Knative refuses pod field {field}")
    for field, flag in KNATIVE_FLAGGED_POD_FIELDS.items():
        if predictor.get(field) and flag not in features:
            errors.append(f"{name}: pod field {field} needs Knative's {flag} feature flag")
    for c in predictor.get("containers", [])[1:]:
        if any(p in c for p in ("livenessProbe", "readinessProbe", "startupProbe")) and \
                MULTI_CONTAINER_PROBING not in features:
            errors.append(f"{name}: probes on sidecar {c['name']} need Knative's {MULTI_CONTAINER_PROBING}")
    if [c for c in predictor.get("containers", []) if c.get("ports")][1:]:
        errors.append(f"{name}: Knative allows ports on one container only")
    if annotations.get("serving.kserve.io/enable-prometheus-scraping") == "true" and \
            annotations.get("serving.kserve.io/enable-metric-aggregation") != "true":
        errors.append(f"{name}: prometheus scraping without metric aggregation scrapes queue-proxy, not the model")
    return errors


def selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and value not in e["values"]) or (op == "NotIn" and value in e.get("values", [])) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def double_scrapes(docs: list[dict]) -> list[str]:
    """ServiceMonitors that select two Services over the same pods and port."""
    services = [d for d in docs if d["kind"] == "Service"]
    errors = []
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        ports = {e["port"] for e in sm["spec"]["endpoints"]}
        seen: dict[tuple, str] = {}
        for svc in services:
            if not selects(sm["spec"]["selector"], svc["metadata"].get("labels", {})):
                continue
            for p in svc["spec"]["ports"]:
                if p["name"] in ports:
                    key = (tuple(sorted(svc["spec"].get("selector", {}).items())), p["name"])
                    if key in seen:
                        errors.append(f"ServiceMonitor {sm['metadata']['name']} scrapes the pods of {seen[key]} "
                                      f"twice (also through {svc['metadata']['name']})")
                    seen[key] = svc["metadata"]["name"]
    return errors
