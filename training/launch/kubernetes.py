"""`--launcher kubernetes`: a training run as a batch/v1 Job, built with the kubernetes client's models.

One node: a Job with one pod running ``parrot train <method>`` (``torchrun --standalone`` when
the pod has several GPUs). Several nodes: an Indexed Job (one pod per node, ``completions =
parallelism = nodes``) plus a headless Service that gives pod 0 a stable DNS name
(``<job>-0.<service>``); every pod runs ``torchrun --nnodes N --node-rank $(JOB_COMPLETION_INDEX)``
with pod 0 as the rendezvous master. The training config travels in the ``PARROT_TRAIN_CONFIG``
environment variable (JSON); object-store credentials come from a Secret (``s3_secret``), never
from the manifest. A failed pod is retried ``backoff_limit`` times and resumes from the latest
checkpoint in the run folder; the finished Job is deleted after ``ttl_seconds_after_finished``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from parrot.errors import ConfigError
from training.config import KubernetesConfig, TrainConfig, parse_toleration

log = logging.getLogger(__name__)

CONFIG_ENV = "PARROT_TRAIN_CONFIG"
SCRATCH = "/scratch"
S3_SECRET_KEYS = ("PARROT_S3_ENDPOINT", "PARROT_S3_ACCESS_KEY", "PARROT_S3_SECRET_KEY")
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


def job_name(cfg: TrainConfig) -> str:
    """An RFC 1123 label: the configured name, else parrot-train-<method>-<run name> (at most 52 chars:
    the Job controller appends the pod suffix)."""
    name = cfg.kubernetes.job_name or f"parrot-train-{cfg.method}-{cfg.name}"
    name = _DNS_LABEL.sub("-", name.lower()).strip("-")[:52].rstrip("-")
    if not name:
        raise ConfigError("kubernetes.job_name: cannot make a DNS label of it; set --kubernetes-job-name")
    return name


def pod_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config the pods run with: launched locally inside the pod, scratch on the pod's volume."""
    data = cfg.to_dict()
    data.pop("kubernetes", None)
    data.update(launcher="local", work_dir=f"{SCRATCH}/work", nproc_per_node=1)
    return data


def train_command(cfg: TrainConfig, name: str, service: str) -> list[str]:
    k = cfg.kubernetes
    procs = max(k.gpus_per_node, 1)
    base = ["parrot", "train", cfg.method]
    if k.nodes == 1 and procs == 1:
        return base
    if k.nodes == 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={procs}", "--no-python", *base]
    return ["torchrun", f"--nnodes={k.nodes}", f"--nproc-per-node={procs}", "--node-rank=$(JOB_COMPLETION_INDEX)",
            f"--master-addr={name}-0.{service}", f"--master-port={k.rendezvous_port}", "--no-python", *base]


def build_manifests(cfg: TrainConfig) -> list[Any]:
    """[Service (multi-node only), Job] as kubernetes client model objects."""
    from kubernetes import client as k8s

    k: KubernetesConfig = cfg.kubernetes
    name = job_name(cfg)
    service = f"{name}-workers"
    labels = {"app.kubernetes.io/name": "parrot", "app.kubernetes.io/component": "training",
              "app.kubernetes.io/instance": name, "parrot.dev/method": cfg.method}
    env = [
        k8s.V1EnvVar(name=CONFIG_ENV, value=json.dumps(pod_config(cfg), sort_keys=True)),
        k8s.V1EnvVar(name="PARROT_CACHE_DIR", value=f"{SCRATCH}/cache"),
        k8s.V1EnvVar(name="PARROT_LOG_FORMAT", value="json"),
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
    ]
    if k.nodes > 1:
        env.append(k8s.V1EnvVar(name="JOB_COMPLETION_INDEX", value_from=k8s.V1EnvVarSource(
            field_ref=k8s.V1ObjectFieldSelector(field_path=f"metadata.annotations['{INDEX_ANNOTATION}']"))))
    if k.s3_secret:
        env += [k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=k.s3_secret, key=key))) for key in S3_SECRET_KEYS]
    env += [k8s.V1EnvVar(name=key, value=str(value)) for key, value in sorted(k.env.items())]
    resources = {"cpu": k.cpu, "memory": k.memory}
    if k.gpus_per_node:
        resources["nvidia.com/gpu"] = str(k.gpus_per_node)
    ports = []
    if k.nodes > 1:
        ports.append(k8s.V1ContainerPort(name="rendezvous", container_port=k.rendezvous_port))
    if cfg.metrics_port:
        ports.append(k8s.V1ContainerPort(name="metrics", container_port=cfg.metrics_port))
    container = k8s.V1Container(
        name="train",
        image=k.image,
        command=train_command(cfg, name, service),
        env=env,
        ports=ports or None,
        resources=k8s.V1ResourceRequirements(requests=resources, limits=resources),
        volume_mounts=[k8s.V1VolumeMount(name="scratch", mount_path=SCRATCH),
                       k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
        security_context=k8s.V1SecurityContext(allow_privilege_escalation=False, run_as_non_root=True,
                                               capabilities=k8s.V1Capabilities(drop=["ALL"])),
    )
    annotations = None
    if cfg.metrics_port:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(cfg.metrics_port)}
    pod = k8s.V1PodSpec(
        restart_policy="Never",
        containers=[container],
        subdomain=service if k.nodes > 1 else None,
        service_account_name=k.service_account or None,
        node_selector=dict(k.node_selector) or None,
        tolerations=[k8s.V1Toleration(**parse_toleration(t)) for t in k.tolerations] or None,
        security_context=k8s.V1PodSecurityContext(run_as_user=1000, run_as_group=1000, fs_group=1000),
        volumes=[k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource()),
                 k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=k.shm_size))],
    )
    job = k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=name, namespace=k.namespace, labels=labels),
        spec=k8s.V1JobSpec(
            backoff_limit=k.backoff_limit,
            ttl_seconds_after_finished=k.ttl_seconds_after_finished,
            completions=k.nodes,
            parallelism=k.nodes,
            completion_mode="Indexed" if k.nodes > 1 else None,
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels, annotations=annotations), spec=pod),
        ),
    )
    if k.nodes == 1:
        return [job]
    svc = k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=k8s.V1ObjectMeta(name=service, namespace=k.namespace, labels=labels),
        spec=k8s.V1ServiceSpec(cluster_ip="None", selector={"app.kubernetes.io/instance": name},
                               publish_not_ready_addresses=True,
                               ports=[k8s.V1ServicePort(name="rendezvous", port=k.rendezvous_port,
                                                        target_port=k.rendezvous_port)]),
    )
    return [svc, job]


def to_dicts(objects: list[Any]) -> list[dict[str, Any]]:
    """Plain dicts with the API's field names (camelCase), as the API server receives them."""
    from kubernetes.client import ApiClient

    return [ApiClient().sanitize_for_serialization(o) for o in objects]


def to_yaml(objects: list[Any]) -> str:
    import yaml

    return yaml.safe_dump_all(to_dicts(objects), sort_keys=False)


def submit(objects: list[Any], api_client: Any = None) -> list[str]:
    """Creates the objects (Service first, then the Job); returns 'Kind/name' of each.

    Without ``api_client`` the in-cluster config is used when running in a pod, else ~/.kube/config.
    """
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    if api_client is None:
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            try:
                k8s_config.load_kube_config()
            except (k8s_config.ConfigException, OSError) as e:
                raise ConfigError(f"no Kubernetes credentials (in-cluster or ~/.kube/config): {e}") from e
        api_client = k8s.ApiClient()
    created = []
    for obj in objects:
        ns = obj.metadata.namespace
        try:
            if obj.kind == "Service":
                k8s.CoreV1Api(api_client).create_namespaced_service(ns, obj)
            else:
                k8s.BatchV1Api(api_client).create_namespaced_job(ns, obj)
        except k8s.ApiException as e:
            raise ConfigError(f"creating {obj.kind} {ns}/{obj.metadata.name} failed: {e.status} {e.reason}: "
                              f"{(e.body or '')[:500]}") from e
        created.append(f"{obj.kind}/{obj.metadata.name}")
        log.info("created", extra={"kind": obj.kind, "object": obj.metadata.name, "namespace": ns})
    return created
