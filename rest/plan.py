"""``rest-react plan``: what a config reserves and how much GPU memory it needs, before anything starts.

Why: on a GPU cluster a run that cannot fit learns it late and expensively: a vLLM
engine whose weights exceed its ``gpu_memory_utilization`` share, a KV cache that cannot
hold one sequence, a learner rank out of memory at its first step, or a placement group
waiting forever for GPUs the cluster does not have. This module reads the config (no
Ray, no toy world build, no download) and, per phase of a generation (``rest.loop``:
rollout, rank, finetune, distil, eval), lists each actor group with the CPUs and GPUs it
reserves (as ``rest.loop``, ``rest.cluster`` and ``learner.group`` ask Ray for them) and
its estimated GPU memory, then checks the whole against a cluster: Ray's ``cluster.yaml``
(node types, their instance types and worker counts) or the config's own reservation.
Colocated (``rest.colocate``), the rollout samplers and the learner ranks take turns on a GPU
per rank: each is checked against the memory its turn leaves it, and ``gpu_use`` compares
the GPU-seconds busy per phase of both modes.

The estimates (standard formulas; every term is printed, so a reader can check it):

- a vLLM engine takes ``gpu_memory_utilization`` x the GPU's memory: weights (parameters
  x dtype bytes), a runtime share (CUDA context, the profile run's activations, CUDA
  graphs unless ``enforce_eager``), and the KV cache gets the rest, 2 x layers x KV heads
  x head_dim x dtype bytes per token; vLLM refuses to start when the weights do not fit
  or the cache cannot hold one sequence of the model's context (``max_model_len``).
- a learner rank under ZeRO (Rajbhandari et al. 2020): 16-bit training keeps 2 bytes of
  parameters, 2 of gradients and 12 of optimizer state (fp32 master, two Adam moments)
  per parameter; fp32 training 4 + 4 + 8. Stage 1 partitions the optimizer state over the
  ranks, stage 2 also the gradients, stage 3 also the parameters (plus the gathered
  embedding and one layer). Activations of one micro-batch of ``max_len`` tokens per
  decoder layer (stored inputs only, plus one layer recomputed, with gradient
  checkpointing), and the logits of the trained positions (``learner.trainer.sft_loss``).

Parameter counts come from the model's config.json (a local directory, or a hub id
already in the Hugging Face cache, read offline through ``core.hub``), else from a table
of known architectures, else the model is "unknown" and its memory is not checked.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from core.config import Config, ConfigError, EngineConfig, colocation_problem
from core.hub import ModelUnavailable, is_local, resolve_model
from evals.qa import check_judge
from learner.trainer import _PLAIN_HEAD_MODELS
from rest.cluster import least_resources
from rest.colocation import bundle_spec, gpu_share, samplers_per_gpu

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2}
#: GPU-side runtime of any CUDA process (context, allocator slack, NCCL buffers), estimated
RUNTIME_GIB = 1.0
#: vLLM: tokens of its profile forward pass (the default max_num_batched_tokens of recent versions)
VLLM_PROFILE_TOKENS = 8192
#: vLLM: memory CUDA graph capture takes when ``enforce_eager`` is off (estimated)
VLLM_GRAPHS_GIB = 0.5

#: config.json fields of hub models this plan knows without their files (Qwen2.5: the GPU config's family)
_QWEN25 = {"model_type": "qwen2", "max_position_embeddings": 32768}
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    f"Qwen/Qwen2.5-{size}{suffix}": {**_QWEN25, **fields}
    for size, fields in {
        "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        "3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                   num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
        "14B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                    num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    }.items()
    for suffix in ("", "-Instruct")
}

#: cloud instance type -> (vCPUs, GPUs, GPU name, GiB per GPU as the driver reports it)
INSTANCE_TYPES: dict[str, tuple[int, int, str, float]] = {
    **{f"m6i.{k}": (c, 0, "", 0.0) for k, c in
       {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "16xlarge": 64}.items()},
    "g5.xlarge": (4, 1, "A10G", 22.5), "g5.2xlarge": (8, 1, "A10G", 22.5),
    "g5.12xlarge": (48, 4, "A10G", 22.5), "g5.48xlarge": (192, 8, "A10G", 22.5),
    "g6.12xlarge": (48, 4, "L4", 22.5), "g6.48xlarge": (192, 8, "L4", 22.5),
    "g6e.xlarge": (4, 1, "L40S", 45.0), "g6e.12xlarge": (48, 4, "L40S", 45.0),
    "g6e.24xlarge": (96, 4, "L40S", 45.0), "g6e.48xlarge": (192, 8, "L40S", 45.0),
    "p4d.24xlarge": (96, 8, "A100-40GB", 40.0), "p4de.24xlarge": (96, 8, "A100-80GB", 80.0),
    "p5.48xlarge": (192, 8, "H100", 79.6), "p5e.48xlarge": (192, 8, "H200", 140.4),
}


# ================================================================ models


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only model, as much as memory needs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    bias: bool
    context: int
    model_type: str

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> Architecture | None:
        """From config.json's fields; None for shapes this plan does not model (MoE, missing fields)."""
        if any(k in c for k in ("num_experts", "num_local_experts", "n_routed_experts")):
            return None
        try:
            h, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(hidden=h, intermediate=int(c["intermediate_size"]), layers=int(c["num_hidden_layers"]),
                       heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads),
                       head_dim=int(c.get("head_dim") or h // heads), vocab=int(c["vocab_size"]),
                       tied=bool(c.get("tie_word_embeddings", False)),
                       bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
                       context=int(c.get("max_position_embeddings") or 0), model_type=str(c.get("model_type", "")))
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention (q/k/v/o, biases), SwiGLU MLP, two norms."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = self.hidden * (q + 2 * kv) + q * self.hidden + ((q + 2 * kv) if self.bias else 0)
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class ModelInfo:
    """A model reference and where its shape came from (``arch`` None: unknown)."""

    ref: str
    arch: Architecture | None
    source: str

    @property
    def label(self) -> str:
        if self.arch is None:
            return f"{self.ref}: size unknown ({self.source})"
        n = self.arch.params
        size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
        return f"{self.ref}: {size} parameters ({self.source})"


def model_info(ref: str, revision: str | None = None) -> ModelInfo:
    """``ref``'s shape from its config.json (local dir, or the HF cache read offline), else the table."""
    if not ref:
        return ModelInfo(ref, None, "no model named")
    try:
        path = resolve_model(ref, revision, offline=True).path
    except ModelUnavailable:
        path = None
    if path is not None and (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return ModelInfo(ref, None, f"unreadable {path / 'config.json'}")
        arch = Architecture.from_config(config)
        where = "local config.json" if is_local(ref) else "config.json in the HF cache"
        return ModelInfo(ref, arch, where if arch else f"{where}: an architecture this plan does not model")
    if ref in KNOWN_ARCHITECTURES:
        return ModelInfo(ref, Architecture.from_config(KNOWN_ARCHITECTURES[ref]),
                         "known-architecture table; not in the HF cache")
    return ModelInfo(ref, None, "not a local dir, not in the HF cache, not in the known-architecture table")


# ================================================================ memory estimates


@dataclass(frozen=True)
class Memory:
    """One actor's GPU memory: named terms in bytes; ``problem`` when the actor cannot start."""

    terms: dict[str, float]
    note: str = ""
    problem: str = ""

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def describe(self) -> str:
        parts = " + ".join(f"{name} {v / GIB:.1f}" for name, v in self.terms.items())
        return f"{self.total / GIB:.1f} GiB = {parts}" + (f" ({self.note})" if self.note else "")


def vllm_memory(arch: Architecture, engine: EngineConfig, gpu_gib: float) -> Memory:
    """A vLLM engine on one GPU of ``gpu_gib``: its share is ``gpu_memory_utilization`` of the GPU;
    the KV cache gets what the weights and the runtime leave."""
    b = DTYPE_BYTES[engine.dtype]
    budget = engine.gpu_memory_utilization * gpu_gib * GIB
    weights = arch.params * b
    runtime = 0.5 * GIB + VLLM_PROFILE_TOKENS * 2 * (arch.hidden + arch.intermediate) * b \
        + (0 if engine.enforce_eager else VLLM_GRAPHS_GIB * GIB)
    kv = budget - weights - runtime
    tokens = int(kv // arch.kv_bytes_per_token(b)) if kv > 0 else 0
    context = arch.context or 0
    terms = {f"weights ({engine.dtype})": weights, "runtime": runtime, "KV cache": max(kv, 0.0)}
    if kv <= 0:
        return Memory(terms, problem=f"weights and runtime ({(weights + runtime) / GIB:.1f} GiB) exceed "
                      f"gpu_memory_utilization {engine.gpu_memory_utilization:g} x {gpu_gib:g} GiB")
    note = f"{tokens:,} KV tokens" + (f", {tokens / context:.1f} x max_model_len {context:,}" if context else "")
    problem = ""
    if context and tokens < context:
        problem = (f"its KV cache holds {tokens:,} tokens, less than one sequence of max_model_len {context:,} "
                   f"(raise engine.gpu_memory_utilization)")
    return Memory(terms, note=note, problem=problem)


def hf_engine_memory(arch: Architecture, engine: EngineConfig) -> Memory:
    """A transformers engine: its weights; its KV cache grows with the batch (not estimated)."""
    return Memory({f"weights ({engine.dtype})": arch.params * DTYPE_BYTES[engine.dtype], "runtime": RUNTIME_GIB * GIB},
                  note="plus a KV cache that grows with the batch")


#: bytes per parameter of (parameters, gradients, optimizer states) per training precision
STATE_BYTES = {"bf16": (2, 2, 12), "fp16": (2, 2, 12), "fp32": (4, 4, 8)}


def zero_states(params: int, precision: str, stage: int, ranks: int) -> dict[str, float]:
    """Per-rank bytes of parameters, gradients and optimizer states under ZeRO ``stage`` over ``ranks``."""
    p, g, o = (params * x for x in STATE_BYTES[precision])
    return {"params": p / ranks if stage >= 3 else p, "grads": g / ranks if stage >= 2 else g,
            "optimizer": o / ranks if stage >= 1 else o}


def activation_bytes(arch: Architecture, micro: int, seq_len: int, target_len: int, dtype_bytes: int,
                     checkpointing: bool, attention: str = "sdpa", zero3: bool = False,
                     plain_head: bool = True) -> dict[str, float]:
    """Bytes kept for the backward of one micro-batch of ``micro`` sequences of ``seq_len`` tokens,
    ``target_len`` of them trained: decoder activations and the logits of the trained positions.

    Per layer and token a decoder layer keeps about ``b(11h + 4h_kv + 4i)`` bytes (its norm
    inputs, q/k/v, the attention output, the SwiGLU's four intermediate tensors), plus the
    ``heads x seq_len`` attention weights in eager attention; the backward adds one layer's
    worth of gradients at a time. With gradient checkpointing only each layer's input is
    kept, and one layer is recomputed at a time. The head runs
    on the trained positions (``sft_loss``; under ZeRO-3 on every column where some row
    has one, on every position for other architectures), its logits kept in the training
    dtype and in fp32 with the log-softmax, ``b + 8`` bytes each.
    """
    b, h = dtype_bytes, arch.hidden
    tokens = micro * seq_len
    per_layer = b * (11 * h + 4 * arch.kv_heads * arch.head_dim + 4 * arch.intermediate)
    if attention == "eager":  # the fp32 softmax, and its cast to the training dtype for the product with v
        per_layer += (4 + (b if b < 4 else 0)) * arch.heads * seq_len
    if checkpointing:
        decoder = tokens * (arch.layers * b * h + 2 * per_layer)
    else:
        decoder = tokens * (arch.layers + 1) * per_layer
    if not plain_head:
        rows = tokens
    elif zero3:
        rows = micro * min(seq_len, micro * target_len)
    else:
        rows = micro * min(seq_len, target_len)
    return {"activations": float(decoder), "logits": float(rows * arch.vocab * (b + 8))}


def learner_memory(arch: Architecture, cfg: Config) -> Memory:
    """One learner rank fitting ``arch`` with ``cfg.learner``'s ZeRO stage, precision, micro-batch and max_len."""
    lr = cfg.learner
    b = DTYPE_BYTES[lr.precision]
    terms = zero_states(arch.params, lr.precision, lr.zero_stage, lr.world_size)
    if lr.zero_stage >= 3:  # the embedding (or head) and one layer gathered while they run
        terms["gathered"] = float((arch.vocab * arch.hidden + arch.layer_params) * b)
    attention = "eager" if lr.attn_implementation == "eager" else "sdpa"
    terms.update(activation_bytes(arch, lr.micro_batch, lr.max_len, cfg.agent.max_new_tokens + 1, b,
                                  lr.gradient_checkpointing, attention, lr.zero_stage >= 3,
                                  arch.model_type in _PLAIN_HEAD_MODELS))
    terms["runtime"] = RUNTIME_GIB * GIB
    note = (f"ZeRO-{lr.zero_stage} over {lr.world_size} ranks, {lr.precision}, micro-batch {lr.micro_batch} x "
            f"{lr.max_len} tokens, checkpointing {'on' if lr.gradient_checkpointing else 'off'}")
    return Memory(terms, note=note)


# ================================================================ the cluster


@dataclass
class NodeType:
    """One kind of node: its Ray resources, GPU memory and how many the autoscaler may run."""

    name: str
    cpus: float
    gpus: int
    gpu_gib: float | None
    gpu_name: str
    min_count: int
    max_count: int
    head: bool = False


@dataclass
class ClusterSpec:
    """The nodes a plan is checked against (from a Ray cluster.yaml, or the config's own reservation)."""

    source: str
    node_types: list[NodeType]
    max_workers: int | None = None

    @classmethod
    def from_yaml(cls, path: str, gpu_gib: float | None = None) -> ClusterSpec:
        """Read a Ray autoscaler cluster.yaml: ``available_node_types`` (InstanceType, resources,
        min/max_workers), ``head_node_type`` and the cluster's ``max_workers``. CPU and GPU counts
        come from ``resources`` where given, else from the instance type; ``gpu_gib`` overrides
        the GPU memory of every type."""
        where = f"--cluster {path}"
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{where}: cannot read: {e.strerror or e}") from None
        except yaml.YAMLError:
            raise ConfigError(f"{where}: not valid YAML") from None
        types = (doc or {}).get("available_node_types") if isinstance(doc, dict) else None
        if not isinstance(types, dict) or not types:
            raise ConfigError(f"{where}: no available_node_types mapping (a Ray cluster.yaml has one)")
        head = doc.get("head_node_type")
        nodes = []
        for name, t in types.items():
            if not isinstance(t, dict):
                raise ConfigError(f"{where}: available_node_types.{name}: must be a mapping")
            resources = t.get("resources") or {}
            instance = str((t.get("node_config") or {}).get("InstanceType", ""))
            cpus, gpus, gpu_name, gib = INSTANCE_TYPES.get(instance, (None, None, "", None))
            cpus = resources.get("CPU", cpus)
            gpus = resources.get("GPU", gpus)
            if cpus is None or gpus is None:
                raise ConfigError(f"{where}: available_node_types.{name}: instance type {instance or '(none)'} is "
                                  f"not in the plan's table: give resources: {{CPU: N, GPU: M}}")
            try:
                low, high = (1, 1) if name == head else (int(t.get("min_workers", 0)), int(t.get("max_workers", 0)))
                nodes.append(NodeType(name, float(cpus), int(gpus), gpu_gib or (gib if gpus else None),
                                      gpu_name or instance, low, max(low, high), name == head))
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: available_node_types.{name}: resources and min/max_workers must be "
                                  f"numbers") from None
        cap = doc.get("max_workers")
        return cls(path, nodes, int(cap) if isinstance(cap, int) else None)

    @classmethod
    def of_config(cls, need: dict[str, float], gpu_gib: float) -> ClusterSpec:
        """One node with exactly the CPUs and GPUs the config reserves, GPUs of ``gpu_gib``."""
        node = NodeType("the config's reservation", float(math.ceil(round(need["CPU"], 3))),
                        math.ceil(round(need["GPU"], 3)), gpu_gib if need["GPU"] else None,
                        f"{gpu_gib:g} GiB assumed (--gpu-gib)", 1, 1)
        return cls("the config's own resource counts", [node])

    def nodes(self, at_max: bool) -> list[NodeType]:
        """Every node, one entry each: each type at its min (or max) count, workers capped by ``max_workers``."""
        out, workers = [], 0
        for t in self.node_types:
            count = t.max_count if at_max else t.min_count
            if not t.head and self.max_workers is not None:
                count = max(0, min(count, self.max_workers - workers))
                workers += count
            out += [t] * count
        return out

    def describe(self) -> str:
        parts = []
        for t in self.node_types:
            gpus = f", {t.gpus} x {t.gpu_name} {t.gpu_gib:g} GiB" if t.gpus and t.gpu_gib else \
                f", {t.gpus} GPUs of unknown memory" if t.gpus else ""
            count = f"{t.min_count}" if t.min_count == t.max_count else f"{t.min_count}-{t.max_count}"
            parts.append(f"{count} x {t.name} ({t.cpus:g} CPUs{gpus})")
        return f"{self.source}: " + ", ".join(parts)


@dataclass
class _Node:
    kind: NodeType
    cpus: float
    gpus: list[float] = field(default_factory=list)  # free fraction of each GPU
    used: list[float] = field(default_factory=list)  # estimated bytes on each GPU


def pack(groups: list[Group], nodes: list[NodeType]) -> list[_Node] | None:
    """Place every actor of ``groups`` on a node as Ray would (a fractional GPU within one GPU, whole
    GPUs to themselves), largest first; None when some actor finds no room."""
    placed = [_Node(n, n.cpus, [1.0] * n.gpus, [0.0] * n.gpus) for n in nodes]
    actors = [g for g in groups for _ in range(g.count)]
    for a in sorted(actors, key=lambda a: (-a.gpus, -a.cpus)):
        memory = a.memory.total if a.memory else 0.0
        for node in placed:
            if node.cpus + 1e-9 < a.cpus:
                continue
            if a.gpus >= 1:
                whole = [i for i, free in enumerate(node.gpus) if free > 1 - 1e-9][: math.ceil(a.gpus)]
                if len(whole) < math.ceil(a.gpus):
                    continue
                for i in whole:
                    node.gpus[i], node.used[i] = 0.0, node.used[i] + memory / len(whole)
            elif a.gpus > 0:
                fits = [i for i, free in enumerate(node.gpus) if free + 1e-9 >= a.gpus]
                if not fits:
                    continue
                i = min(fits, key=lambda j: node.gpus[j])
                node.gpus[i] -= a.gpus
                node.used[i] += memory
            node.cpus -= a.cpus
            break
        else:
            return None
    return placed


# ================================================================ the plan


@dataclass
class Group:
    """Actors of one kind in one phase: how many, what each reserves, and its GPU memory estimate."""

    phase: str
    name: str
    count: int
    cpus: float
    gpus: float
    memory: Memory | None  # None: no GPU, or an unknown model
    detail: str = ""
    #: alive beside every eval pool (the eval judge), not one of the pools
    beside_pools: bool = False
    #: colocated (``rest.colocation``): the GPU fraction whose memory it may fill while it holds the
    #: shared GPU (the learner the whole GPU, each rollout sampler its part of it), not ``gpus``
    turn_gpus: float | None = None


@dataclass
class Plan:
    """The groups per phase, what is held at once, and the verdict against ``cluster``."""

    config: str
    cluster: ClusterSpec
    models: list[ModelInfo]
    groups: list[Group]
    lines: list[str]
    refusal: str = ""


def plan(cfg: Config, cluster_path: str | None = None, gpu_gib: float | None = None) -> Plan:
    """Resolve ``cfg`` (no world build, no Ray) into its actor groups and check them against the cluster.

    ``cluster_path``: a Ray cluster.yaml (None: one node with exactly the config's reservation, GPUs of
    ``gpu_gib`` or 80 GiB). Memory is checked against the cluster's smallest GPU. Models are named as
    the run resolves them (``rest.runs.resolve_config``): the policy, the students, the judge; a toy
    world's models are printed as world-dependent paths, read only if that world is already built.
    """
    check_judge(cfg.eval)  # a judge the run cannot build is refused here as by the run
    r, k, lr = cfg.rest, cfg.ranker, cfg.learner
    world = bool(cfg.world.dir)
    policy = cfg.models.policy or cfg.engine.model or (str(cfg.world.model_path("L-warm")) if world else "")
    if not policy:
        raise ConfigError(f"{cfg.source}: models.policy: required (or engine.model, or world.dir)")
    students = dict(cfg.models.students) or (
        {s: str(cfg.world.model_path(f"{s}-base")) for s in ("S", "XS")} if world else {})
    revisions = cfg.models.revisions
    infos = {ref: model_info(ref, revisions.get(ref)) for ref in dict.fromkeys([policy, *students.values()])}
    judge = cfg.engine.serving(k.judge_model, k.judge_backend) if k.kind == "llm-judge" else None
    e = cfg.eval
    eval_judge = cfg.engine.serving(e.judge_model, e.judge_backend) if e.judge == "llm" else None
    for j in (judge, eval_judge):
        if j is not None:
            infos.setdefault(j.model, model_info(j.model, revisions.get(j.model)))
    if cfg.engine.random_init and cfg.engine.model in infos and infos[cfg.engine.model].arch is None:
        infos[cfg.engine.model] = replace(infos[cfg.engine.model], source=f"a random {cfg.engine.random_init!r} "
                                          f"model built on first use (engine.random_init)")
    models_dir = Path(cfg.world.dir) / "models"
    from_world = [ref for ref in infos if world and Path(ref).is_relative_to(models_dir)]  # not built here
    for ref in from_world:
        info = infos[ref]
        build = f"rest-react world --out {cfg.world.dir} --seed {cfg.world.seed} --size {cfg.world.size}"
        infos[ref] = replace(info, source=f"world-dependent: the toy world's, read from {info.source}" if info.arch
                             else f"world-dependent: the toy world's, not built yet: `{build}` builds it")

    cluster = ClusterSpec.from_yaml(cluster_path, gpu_gib) if cluster_path else \
        ClusterSpec.of_config(least_resources(cfg), gpu_gib or 80.0)
    gib = min((t.gpu_gib for t in cluster.node_types if t.gpus and t.gpu_gib), default=None)

    def engine_memory(ref: str, engine: EngineConfig, gpus: float) -> Memory | None:
        arch = infos[ref].arch
        if gpus <= 0 or arch is None or gib is None:
            return None
        return vllm_memory(arch, engine, gib) if engine.backend == "vllm" else hf_engine_memory(arch, engine)

    engine = replace(cfg.engine, model=policy)
    per_gpu = samplers_per_gpu(cfg)
    share = gpu_share(per_gpu) if cfg.colocated else None  # what each colocated actor asks Ray for
    rollout_gpus = share or r.sampler_num_gpus
    groups = [
        Group("rollout", f"search ({cfg.search.backend})", r.num_search_actors, r.search_num_cpus, 0.0, None),
        Group("rollout", f"rollout sampler ({engine.backend}, L)", r.num_samplers, r.sampler_num_cpus,
              rollout_gpus, engine_memory(policy, engine, rollout_gpus), policy,
              turn_gpus=1 / per_gpu if share else None),
        Group("rank", f"ranker ({k.kind}{f', {judge.backend}' if judge else ''})", k.num_actors, k.num_cpus,
              k.num_gpus, engine_memory(judge.model, judge, k.num_gpus) if judge else None,
              judge.model if judge else ""),
    ]
    for phase, name, ref in [("finetune", "L", policy), *(("distil", s, ref) for s, ref in students.items())]:
        arch = infos[ref].arch
        memory = learner_memory(arch, cfg) if arch and lr.num_gpus_per_rank > 0 and gib else None
        groups.append(Group(phase, f"learner rank ({name})", lr.world_size, lr.num_cpus_per_rank,
                            share or lr.num_gpus_per_rank, memory, ref, turn_gpus=1.0 if share else None))
    evaluated = {"L": policy, **students}
    for name, ref in evaluated.items():
        groups.append(Group("eval", f"eval sampler ({engine.backend}, {name})", r.num_samplers, r.sampler_num_cpus,
                            r.sampler_num_gpus, engine_memory(ref, replace(engine, model=ref), r.sampler_num_gpus),
                            ref))
    if eval_judge is not None:
        groups.append(Group("eval", f"eval judge ({eval_judge.backend})", 1, e.judge_num_cpus, e.judge_num_gpus,
                            engine_memory(eval_judge.model, eval_judge, e.judge_num_gpus), eval_judge.model,
                            beside_pools=True))
    return _check(cfg, cluster, list(infos.values()), groups, gib, cluster_path)


def gpu_use(cfg: Config, by: dict[str, list[Group]], evals: list[Group], judges: list[Group]) -> list[str]:
    """Per phase, GPU-seconds busy over GPU-seconds held, separate and colocated side by side.

    The plan has no timings, so the model is per phase: every GPU of a group at work in the phase
    is busy for the whole phase, every other GPU the run holds idles; the ratio is then GPUs at
    work over GPUs held, whatever the phase lasts. Held: what the run reserves at once (every
    group, one learner fit, one eval pool; ``evals`` are the pools side by side, largest first,
    so the eval phase holds the extra ones too), in the mode of the column. Separate, the
    rollout samplers keep their own GPUs; colocated, they share the learner's (``rest.colocation``)
    and every shared GPU generates in the rollout and fits in the fine-tunes. It leaves out
    what the model cannot see: a working GPU's own idle time (stragglers, search waits, a
    learner rank waiting on the collective) and the time the colocated hand-overs take.
    """
    r, lr = cfg.rest, cfg.learner
    gpus = lambda gs: sum(g.count * g.gpus for g in gs)  # noqa: E731
    ranker = gpus(by["rank"])
    extra_pools = gpus(evals[1:])
    columns: dict[str, dict[str, tuple[float, float]] | str] = {}
    for mode in ("off", "on"):
        problem = colocation_problem(replace(r, colocate=mode), lr)
        if problem:
            columns[mode] = problem
            continue
        held = least_resources(replace(cfg, rest=replace(r, colocate=mode)))["GPU"]
        rollout = lr.world_size if mode == "on" else r.num_samplers * r.sampler_num_gpus
        fit = lr.world_size * (1.0 if mode == "on" else lr.num_gpus_per_rank)
        at_work = {"rollout": rollout, "rank": ranker, "finetune": fit, "distil": fit if by["distil"] else 0.0,
                   "eval": gpus(evals) + gpus(judges)}
        columns[mode] = {name: (n, held + (extra_pools if name == "eval" else 0.0)) for name, n in at_work.items()}
    if not any(isinstance(c, dict) and any(h > 0 for _, h in c.values()) for c in columns.values()):
        return []
    title = {"off": "separate", "on": "colocated"}
    runs = "on" if cfg.colocated else "off"
    lines = ["GPU-seconds busy over GPU-seconds held, per phase (no timings: a working group's GPUs count busy "
             "for the whole phase, every other held GPU idle; hand-overs and stragglers not counted):",
             (f"  {'phase':9s} " + "  ".join(f"{title[m] + (' (this run)' if m == runs else ''):22s}"
                                             for m in columns)).rstrip()]
    for name in ("rollout", "rank", "finetune", "distil", "eval"):
        cells = []
        for c in columns.values():
            if isinstance(c, str):
                cells.append(f"{'-':22s}")
            else:
                n, held = c[name]
                cells.append(f"{f'{n:g} of {held:g} ({100 * n / held:.0f}%)' if held else '-':22s}")
        lines.append(f"  {name:9s} " + "  ".join(cells).rstrip())
    lines += [f"  colocated: not possible for this config: {c}" for c in columns.values() if isinstance(c, str)]
    return lines


def _shared_gpus(cfg: Config, by: dict[str, list[Group]]) -> Group:
    """A colocated run's shared GPUs as ``pack`` places them: one whole GPU per learner rank, with the CPUs
    of the rank and its samplers, holding the larger of its rollout samplers awake and the largest fit."""
    samplers = next(g for g in by["rollout"] if g.turn_gpus is not None)
    fits = [g for g in by["finetune"] + by["distil"] if g.memory]
    per_gpu = samplers_per_gpu(cfg)
    engines = per_gpu * samplers.memory.total if samplers.memory else 0.0
    fit = max((g.memory.total for g in fits), default=0.0)
    memory = Memory({"rollout samplers" if engines >= fit else "learner rank": max(engines, fit)}) \
        if engines or fit else None
    return Group("shared", "shared GPU", cfg.learner.world_size, bundle_spec(cfg).get("CPU", 0.0), 1.0, memory)


def _largest(groups: list[Group]) -> Group:
    return max(groups, key=lambda g: g.memory.total if g.memory else 0.0)


def _check(cfg: Config, cluster: ClusterSpec, models: list[ModelInfo], groups: list[Group],
           gib: float | None, cluster_path: str | None) -> Plan:
    """What is held at once and per phase, every actor's own fit, the packing onto the nodes."""
    out = Plan(cfg.source, cluster, models, groups, [])
    refusals = []
    for g in groups:
        if g.memory and g.memory.problem:
            refusals.append(f"{g.name} ({g.detail}): {g.memory.problem}")
        elif g.memory and gib and g.gpus > 0 and g.memory.total > (g.turn_gpus or g.gpus) * gib * GIB * 1.0001:
            gpus = g.turn_gpus or g.gpus
            share = "a GPU" if gpus == 1 else f"{gpus:g} GPUs" if gpus > 1 else f"{gpus:.3g} of a GPU"
            why = ("the rollout samplers that share a GPU are awake together" if g.turn_gpus else
                   "Ray may give the rest of the GPU to another actor")
            refusals.append(f"{g.name} ({g.detail}) needs {g.memory.total / GIB:.1f} GiB on {share} "
                            f"({gpus * gib:.1f} GiB of {gib:g} GiB GPUs; {why})")

    by = {p: [g for g in groups if g.phase == p] for p in ("rollout", "rank", "finetune", "distil", "eval")}
    judges = [g for g in by["eval"] if g.beside_pools]
    by["eval"] = [g for g in by["eval"] if not g.beside_pools]
    held = by["rollout"] + by["rank"]
    need = least_resources(cfg)
    least = held + [_largest(by["finetune"])] + [_largest(by["eval"])] + judges  # one learner fit, one eval pool
    if cfg.colocated:  # the rollout samplers and the learner ranks take turns on a GPU each
        least = [g for g in least if g.turn_gpus is None] + [_shared_gpus(cfg, by)]
    out.lines.append(f"held at once (every group, one eval pool): {need['CPU']:g} CPUs, {need['GPU']:g} GPUs")
    if cfg.colocated:
        per_gpu = samplers_per_gpu(cfg)
        out.lines.append(f"colocated (rest.colocate): {cfg.learner.world_size} GPUs shared, each by a learner rank and "
                         f"{per_gpu} rollout sampler(s) asking Ray for {gpu_share(per_gpu):g} of it; they take turns, the "
                         f"learner holding the whole GPU while it fits")
    fit, at_max, pools = None, False, 1
    for at_max in (False, True):
        fit = pack(least, cluster.nodes(at_max))
        if fit is not None:
            break
    if fit is None:
        have_cpu = sum(n.cpus for n in cluster.nodes(True))
        have_gpu = sum(n.gpus for n in cluster.nodes(True))
        refusals.append(f"{cluster.source} ({have_cpu:g} CPUs, {have_gpu:g} GPUs at most) cannot place the actors "
                        f"a run holds at once ({need['CPU']:g} CPUs, {need['GPU']:g} GPUs)")
    else:
        for extra in range(1, len(by["eval"])):
            if pack(least + by["eval"][:extra], cluster.nodes(at_max)) is None:
                break
            pools = extra + 1
    evals = sorted(by["eval"], key=lambda g: g.memory.total if g.memory else 0.0, reverse=True)[:pools]
    awake = [g for g in held if g.turn_gpus is None]  # colocated, the rollout samplers sleep while the learner fits
    phases = {  # what holds GPU memory in each phase (the learner only while it fits; engines while alive)
        "rollout": by["rollout"], "rank": held, "finetune": awake + by["finetune"],
        "distil": awake + ([_largest(by["distil"])] if by["distil"] else []), "eval": held + evals + judges,
    }
    out.lines += gpu_use(cfg, by, evals, judges)
    totals = {name: sum(g.count * g.memory.total for g in gs if g.memory) for name, gs in phases.items()}
    if any(totals.values()):
        out.lines.append("GPU memory in use per phase (an engine stays loaded from its first phase to the end of "
                         "the run, a colocated rollout sampler's asleep while the learner fits; a learner rank "
                         "holds GPU memory only while it fits):")
        out.lines += [f"  {name:9s} {v / GIB:6.1f} GiB" for name, v in totals.items()]
        top = max(totals, key=totals.get)
        out.lines.append(f"peak: {totals[top] / GIB:.1f} GiB in {top}")
    unknown = sorted({m.ref for m in models if m.arch is None})
    if unknown and any(g.gpus > 0 for g in groups):
        out.lines.append(f"GPU memory not checked for: {', '.join(unknown)}")
    if gib is None and any(g.gpus > 0 for g in groups):
        out.lines.append("GPU memory per GPU unknown (give --gpu-gib): memory not checked")
    if fit is not None:
        busiest = max(((u, n) for n in fit for u in n.used), key=lambda x: x[0], default=(0.0, None))
        if busiest[1] is not None and busiest[0]:
            out.lines.append(f"peak on one GPU: {busiest[0] / GIB:.1f} GiB of {busiest[1].kind.gpu_gib:g} GiB "
                             f"(the actors placed as Ray would, largest first)")
        nodes = len([n for n in fit if n.kind.cpus or n.kind.gpus])
        where = "" if cluster_path is None else " at min_workers" if not at_max else \
            " once the autoscaler scales up to max_workers"
        where += f" ({nodes} node{'s' if nodes != 1 else ''})"
        verdict = "does not fit" if refusals else "fits"
        out.lines.append(f"{verdict}: {cluster.source} places every actor{where}; "
                         f"{pools} of {len(by['eval'])} models' eval pools side by side")
    if refusals:
        out.refusal = f"{cfg.source} cannot fit {cluster.source}: {refusals[0]}" + \
            (f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else "")
    return out


def format_plan(p: Plan) -> str:
    """The plan as text: the cluster, the models, one row per actor group by phase, the totals."""
    rows = [f"plan for {p.config}", f"cluster: {p.cluster.describe()}", "models:"]
    rows += [f"  {m.label}" for m in p.models]
    rows.append(f"{'phase':9s} {'actor group':34s} {'n':>2s} {'CPUs':>5s} {'GPUs':>5s}  GPU memory per actor")
    for g in p.groups:
        if g.memory:
            mem = g.memory.describe()
        elif g.gpus > 0:
            mem = "unknown"
        else:
            mem = "-"
        rows.append(f"{g.phase:9s} {g.name:34s} {g.count:2d} {g.cpus:5g} {g.gpus:5g}  {mem}")
    rows += p.lines
    return "\n".join(rows)
