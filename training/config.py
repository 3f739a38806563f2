"""Typed training configs: one dataclass per method, every field with help text.

Precedence: dataclass defaults < YAML ``--config`` file < CLI flags. The CLI flags are made
from the fields (``training_options`` below turns each field into a typer option with its help
text), so a field, its YAML key and its flag share one name (``learning_rate`` ->
``--learning-rate``). ``__post_init__`` rejects bad values with a message naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from parrot.errors import ConfigError

DEEPSPEED_PRESETS = ("zero2", "zero3", "none")
LAUNCHERS = ("local", "kubernetes")
PRECISIONS = ("auto", "bf16", "fp32")
ASKER_LOSS_ON = ("last", "all")
STRATEGIES = ("context_neglect", "context_hallucination", "context_misunderstanding")


@dataclass
class KubernetesConfig:
    """Where and how a training Job runs on Kubernetes (``--launcher kubernetes``)."""

    image: str = field(default="parrot:latest", metadata={"help": "Container image holding the parrot package."})
    namespace: str = field(default="default", metadata={"help": "Namespace of the Job."})
    job_name: str = field(default="", metadata={"help": "Job name (default: parrot-train-<method>-<run name>)."})
    nodes: int = field(default=1, metadata={"help": "Pods (nodes); >1 makes an Indexed Job + headless Service + torchrun rendezvous."})
    gpus_per_node: int = field(default=0, metadata={"help": "nvidia.com/gpu per pod (also the processes per pod); 0 = CPU."})
    cpu: str = field(default="4", metadata={"help": "CPU request (and limit) per pod."})
    memory: str = field(default="32Gi", metadata={"help": "Memory request (and limit) per pod."})
    node_selector: dict[str, str] = field(default_factory=dict,
                                          metadata={"help": "Node labels the pods need (YAML mapping; flag: key=value,...)."})
    tolerations: list[str] = field(default_factory=list,
                                   metadata={"help": "Tolerations as key=value:Effect or key:Effect (flag: comma-separated)."})
    s3_secret: str = field(default="", metadata={"help": "Secret with keys PARROT_S3_ENDPOINT, PARROT_S3_ACCESS_KEY, PARROT_S3_SECRET_KEY (object store credentials)."})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": "Extra environment variables (flag: KEY=value,...)."})
    service_account: str = field(default="", metadata={"help": "ServiceAccount of the pods (empty: the namespace default)."})
    backoff_limit: int = field(default=2, metadata={"help": "Retries of a failed pod; a retry resumes from the latest checkpoint."})
    ttl_seconds_after_finished: int = field(default=86400, metadata={"help": "Delete the finished Job after this many seconds."})
    rendezvous_port: int = field(default=29500, metadata={"help": "torchrun rendezvous port on pod 0 (multi-node)."})
    shm_size: str = field(default="8Gi", metadata={"help": "Size of the /dev/shm memory volume (dataloaders, NCCL)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the manifests as YAML instead of submitting them."})

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"kubernetes.nodes is {self.nodes}; it must be at least 1")
        if self.gpus_per_node < 0:
            raise ConfigError(f"kubernetes.gpus_per_node is {self.gpus_per_node}; it must be 0 or more")
        if self.backoff_limit < 0 or self.ttl_seconds_after_finished < 0:
            raise ConfigError("kubernetes.backoff_limit and ttl_seconds_after_finished must be 0 or more")
        for t in self.tolerations:
            parse_toleration(t)


def parse_toleration(text: str) -> dict[str, str]:
    """``key=value:Effect`` (operator Equal) or ``key:Effect`` (operator Exists) -> toleration fields."""
    body, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not body:
        raise ConfigError(f"kubernetes.tolerations: {text!r} must be key=value:Effect or key:Effect, "
                          "Effect one of NoSchedule, PreferNoSchedule, NoExecute")
    key, eq, value = body.partition("=")
    if eq:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


@dataclass
class TrainConfig:
    """Settings every method shares."""

    model: str = field(default="smollm2", metadata={"help": "Start model: 'smollm2' (bundled), a model folder, or an object-store URL of one (s3://..., file://...)."})
    dataset: str = field(default="", metadata={"help": "Training data: a local path or object-store URL of a file (s3://bucket/key.jsonl)."})
    eval_dataset: str = field(default="", metadata={"help": "Held-out data in the same format (optional)."})
    output: str = field(default="", metadata={"help": "Object-store URL of the run folder (dir, file:///dir or s3://bucket/prefix): model/, checkpoints/, metrics.jsonl, train.log."})
    run_name: str = field(default="", metadata={"help": "Name of the run (logs, metrics labels; default: the last part of --output)."})
    work_dir: str = field(default="", metadata={"help": "Local scratch folder for checkpoints before upload (default: $PARROT_CACHE_DIR/training/<run name>)."})
    deepspeed: str = field(default="zero2", metadata={"help": "DeepSpeed config: zero2, zero3 (shipped presets), a JSON file path, or none."})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware has it), bf16 or fp32."})
    launcher: str = field(default="local", metadata={"help": "local (this machine; under torchrun each process joins the group) or kubernetes (submit a Job)."})
    nproc_per_node: int = field(default=1, metadata={"help": "local: processes on this machine (>1 starts them through torchrun; one per GPU)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps to train (-1: num_epochs over the data)."})
    num_epochs: float = field(default=3.0, metadata={"help": "Epochs over the data when max_steps is -1."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name: cosine, linear, constant, ..."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of the steps spent warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=2, metadata={"help": "Sequences per device per micro-step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    max_length: int = field(default=2048, metadata={"help": "Longest sequence in tokens; longer ones are cut at the end."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward (saves memory)."})
    seed: int = field(default=42, metadata={"help": "Random seed (data order, init of new weights)."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss, step time and tokens/s every N steps."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint (and upload it) every N steps; the run resumes from the latest."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept in the store (older ones are deleted)."})
    resume: bool = field(default=True, metadata={"help": "Resume from the latest complete checkpoint in --output if there is one."})
    metrics_port: int = field(default=0, metadata={"help": "Expose Prometheus metrics on this port while training (0: off)."})
    pushgateway: str = field(default="", metadata={"help": "Push metrics to this Prometheus Pushgateway (host:port or URL) at each log step (empty: off)."})
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig, metadata={"help": "Job settings for --launcher kubernetes."})

    method = "base"

    def __post_init__(self) -> None:
        if isinstance(self.kubernetes, Mapping):
            self.kubernetes = from_mapping(KubernetesConfig, self.kubernetes, "kubernetes")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"launcher is {self.launcher!r}; allowed: {', '.join(LAUNCHERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision is {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.deepspeed not in DEEPSPEED_PRESETS and not self.deepspeed.endswith(".json"):
            raise ConfigError(f"deepspeed is {self.deepspeed!r}; use {', '.join(DEEPSPEED_PRESETS)} or a .json file")
        for name in ("nproc_per_node", "batch_size", "gradient_accumulation_steps", "max_length", "logging_steps", "save_steps",
                     "save_total_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be at least 1")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps is {self.max_steps}; use -1 (epochs) or a positive number")
        if self.max_steps == -1 and self.num_epochs <= 0:
            raise ConfigError(f"num_epochs is {self.num_epochs}; it must be positive when max_steps is -1")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate is {self.learning_rate}; it must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio is {self.warmup_ratio}; allowed 0 <= x < 1")

    def validate_for_run(self) -> None:
        """Checks that only matter when a run starts (the CLI's --help and --dry-run work without them)."""
        if not self.dataset:
            raise ConfigError("dataset is not set; give --dataset (a path or s3://bucket/key.jsonl)")
        if not self.output:
            raise ConfigError("output is not set; give --output (a directory or s3://bucket/prefix for the run)")

    @property
    def name(self) -> str:
        if self.run_name:
            return self.run_name
        tail = self.output.rstrip("/").rsplit("/", 1)[-1]
        return tail or self.method

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SFTConfig(TrainConfig):
    """Multi-turn SFT: loss on the assistant turns of ShareGPT / collection conversations."""

    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    method = "sft"


@dataclass
class AskerConfig(TrainConfig):
    """Parrot-Ask: SFT on role-swapped chats; the loss is on the user turns the asker writes."""

    learning_rate: float = field(default=3e-5, metadata={"help": "Peak learning rate (paper: 3e-5)."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of the steps spent warming up."})
    loss_on: str = field(default="last", metadata={"help": "last: loss only on the final assistant message (the target user turn); all: on every assistant message of the role-swapped chat."})
    method = "asker"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_on not in ASKER_LOSS_ON:
            raise ConfigError(f"loss_on is {self.loss_on!r}; allowed: {', '.join(ASKER_LOSS_ON)}")


@dataclass
class CaPOConfig(TrainConfig):
    """CaPO: DPO on context-perturbed preference pairs, from an SFT checkpoint."""

    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate (paper: 1e-5 at 13B; smaller models want less)."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: strength of the KL pull toward the reference model."})
    sft_weight: float = field(default=0.0, metadata={"help": "Weight of an added SFT (NLL) term on the chosen answers; 0 = pure DPO."})
    precompute_ref: bool = field(default=False, metadata={"help": "Compute the reference log-probs once before training (frees the reference model)."})
    eval_steps: int = field(default=0, metadata={"help": "Every N steps, per-strategy preference accuracy and margins on the eval pairs (0: only at the end)."})
    eval_max_pairs: int = field(default=512, metadata={"help": "Pairs used for the per-strategy report (the first N of the eval set, or of the training set without one)."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Hold out this fraction of the sessions (by a hash of each pair's source_id) as eval pairs: preference accuracy and margin before (reference) and after training, per strategy. Not with eval_dataset."})
    method = "capo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ConfigError(f"beta is {self.beta}; it must be positive")
        if self.sft_weight < 0:
            raise ConfigError(f"sft_weight is {self.sft_weight}; it must be 0 or more")
        if self.eval_steps < 0 or self.eval_max_pairs < 1:
            raise ConfigError("eval_steps must be 0 or more and eval_max_pairs at least 1")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction is {self.eval_fraction}; allowed 0 <= x < 1")
        if self.eval_fraction and self.eval_dataset:
            raise ConfigError("eval_fraction and eval_dataset both give eval pairs; set only one")


METHODS: dict[str, type[TrainConfig]] = {"sft": SFTConfig, "asker": AskerConfig, "capo": CaPOConfig}


# ----------------------------------------------------------------------------- loading


def from_mapping(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Builds ``cls`` from a mapping, rejecting unknown keys with the allowed ones listed."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    try:
        return cls(**dict(data))
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def load_config(cls: type[TrainConfig], yaml_path: str | None = None,
                overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None) -> TrainConfig:
    """defaults < ``base`` or YAML file < overrides (CLI flags; ``kubernetes.x`` keys reach the nested config)."""
    import yaml

    data: dict[str, Any] = dict(base or {})
    if yaml_path:
        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text())
        except OSError as e:
            raise ConfigError(f"--config: cannot read {yaml_path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"--config: {yaml_path} is not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config: {yaml_path} must hold a mapping of {cls.__name__} fields")
        data = dict(loaded or {})
    kube = dict(data.pop("kubernetes", None) or {})
    for key, value in (overrides or {}).items():
        if key.startswith("kubernetes."):
            kube[key.split(".", 1)[1]] = value
        else:
            data[key] = value
    where = yaml_path or "config"
    data["kubernetes"] = from_mapping(KubernetesConfig, kube, f"{where}: kubernetes")
    return from_mapping(cls, data, where)
