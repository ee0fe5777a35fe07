"""The transformers engine: batched sampling with a shared KV cache (the CPU default).

One ``generate`` call serves a whole wave of agent steps. Each prompt is encoded as
the learner encodes training prompts (bos, then the text's tokens), the prompts are left-padded
into one batch and prefilled once; each prompt's KV cache is then copied ``n`` times,
so the K samples of a step share one prefill (the prompt is usually far longer than
the answer). Decoding runs at most ``max_batch`` sequences at once, drops finished
ones from the batch, and keeps each sampled token's log-probability under the
model's own (temperature 1) distribution, which is what the rollout's
lowest-perplexity choice and the ranker compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from core.engine import Sample
from core.errors import EngineError
from core.hub import resolve_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device_bytes(device: torch.device) -> int:
    """Bytes the CUDA allocator holds for tensors on ``device``; 0 on the CPU (host memory is not counted)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _unfilled(like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Fresh storage of ``like``'s shape and dtype on ``device``, NaN where the dtype has it (zeros otherwise)."""
    fill = math.nan if like.dtype.is_floating_point else 0
    return torch.full(like.shape, fill, dtype=like.dtype, device=device)


def check_generate_args(n: int, temperature: float, max_new_tokens: int) -> None:
    """Reject arguments no engine can honour, with one line naming the argument."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")


def clean_text(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string, less a trailing broken character.

    A sample that ends inside a multi-byte character decodes to U+FFFD at the end;
    vLLM's incremental detokenizer holds such bytes back, so both engines drop them.
    """
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].rstrip("\ufffd")


def encode_prompts(tokenizer, prompts: Sequence[str], max_new_tokens: int, context: int) -> list[list[int]]:
    """Token ids per prompt: bos (when the tokenizer has one), then the prompt's own tokens.

    This is the learner's convention (``learner/data.py``: bos placed by the caller,
    text encoded without special tokens), so the model samples from the same kind of
    input it was trained on, whichever engine runs it. A prompt that leaves no room
    for ``max_new_tokens`` inside the model's context is an EngineError.
    """
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    fallback = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    ids = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} must be a string, got {type(p).__name__}")
        x = bos + list(tokenizer.encode(p, add_special_tokens=False))
        ids.append(x or [int(fallback)])  # an empty prompt without bos still needs one token
        if len(ids[-1]) + max_new_tokens > context:
            raise EngineError(
                f"prompt {i} has {len(ids[-1])} tokens; with max_new_tokens={max_new_tokens} "
                f"it exceeds the model's context of {context}"
            )
    return ids


def check_model_dir(model: str | Path, revision: str | None = None) -> Path:
    """The local directory of ``model`` (a directory, or a hub id at ``revision`` resolved
    through the Hugging Face cache: ``core.hub``), or EngineError if it holds no safetensors model."""
    d = resolve_model(str(model), revision).path
    if not (d / "config.json").is_file():
        raise EngineError(f"not a Hugging Face model dir (no config.json): {d}")
    if not any(d.glob("*.safetensors")):
        raise EngineError(f"no *.safetensors weights in model dir: {d}")
    return d


class StopChecker:
    """Decides, token by token, whether a sequence has just finished.

    A sequence ends on an eos token or on the token that completes a stop string.
    Single-byte stops (the usual ``"\\n"``) are checked by token id alone: the set of
    vocabulary tokens whose text contains them is computed once. Longer stops, which
    can span tokens, are found by decoding only the last few tokens.
    """

    def __init__(self, tokenizer, eos_ids: set[int], stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stop = tuple(stop)
        ids = [[i] for i in range(len(tokenizer))] if self.stop else []
        vocab = tokenizer.batch_decode(ids, skip_special_tokens=False)
        self.stop_ids = {i for i, piece in enumerate(vocab) if any(s in piece for s in self.stop)}
        self.long_stops = tuple(s for s in self.stop if len(s.encode()) > 1)
        self.window = max((len(s.encode()) for s in self.long_stops), default=0) + 2

    def done(self, tokens: list[int]) -> bool:
        last = tokens[-1]
        if last in self.eos_ids or last in self.stop_ids:
            return True
        if self.long_stops:
            tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=True)
            return any(s in tail for s in self.long_stops)
        return False


class HFEngine:
    """``Engine`` over a transformers causal LM loaded from a safetensors directory.

    ``n_tokens`` of a sample counts the generated tokens kept: up to and including the
    token that ended it (the eos token, or the token that completed a stop string,
    even when that token's text reaches past the cut), so the likelihoods of samples
    that stopped and samples that ran to ``max_new_tokens`` stay comparable.
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        max_batch: int = 64,
        threads: int = 1,
        device: str | None = None,
        revision: str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per actor start floods the driver's log
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        torch.set_num_threads(threads)
        self.model_dir = check_model_dir(model_dir, revision)  # a hub id: its snapshot in the HF cache
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_batch = max_batch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(
                str(self.model_dir), dtype=_DTYPES[dtype], use_safetensors=True
            )
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(f"cannot load model from {self.model_dir}: {first}") from None
        self.model.to(self.device).eval()
        self.version = 0
        gen_eos = self.model.generation_config.eos_token_id
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos
        self.pad_id = next(
            i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None
        )
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self._stop_checkers: dict[tuple[str, ...], StopChecker] = {}
        #: while asleep: the model's parameters and buffers in host memory, a discarded one as a meta
        #: tensor of its shape and dtype (``sleep``)
        self._host: dict[str, torch.Tensor] | None = None

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
        check_generate_args(n, temperature, max_new_tokens)
        self._check_awake("generate")
        if not prompts:
            return []
        stops = tuple(s for s in (stop or ()) if s)
        checker = self._checker(stops)
        ids = self._encode(prompts, max_new_tokens)
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        out: list[list[Sample]] = [[] for _ in prompts]
        for chunk in self._plan([len(x) for x in ids], n):
            seqs = self._decode_chunk(
                [ids[i] for i, _ in chunk], [c for _, c in chunk], temperature, max_new_tokens, checker, gen
            )
            rows = iter(seqs)
            for i, count in chunk:
                for _ in range(count):
                    tokens, logprobs = next(rows)
                    text = self.tokenizer.decode(
                        tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
                    )
                    out[i].append(Sample(clean_text(text, stops), len(tokens), float(sum(logprobs))))
        return out

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy ``state`` into the model in place and set ``version``.

        Keys must match the model's state dict exactly, except that a tied weight
        (``lm_head.weight`` when the embeddings are tied) may be left out.
        """
        if not isinstance(version, int):
            raise EngineError(f"load_weights: version must be an int, got {version!r}")
        self._check_awake("load_weights")
        own = self.model.state_dict()
        missing = sorted(k for k in own if k not in state and not self._alias_given(k, own, state))
        unexpected = sorted(k for k in state if k not in own)
        if missing or unexpected:
            raise EngineError(
                f"load_weights: state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise EngineError(
                    f"load_weights: {k} has shape {tuple(v.shape)}, the model has {tuple(own[k].shape)}"
                )
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)
        self.version = version

    def sleep(self, level: int = 1) -> tuple[int, float]:
        """Take the weights off the model for a learner that shares this device (``rest.colocation``).

        The levels are vLLM's. Level 1 moves every parameter and buffer to host memory; ``wake``
        puts the same values back. Level 2 discards the parameters (the buffers, rotary tables
        and the like that no checkpoint holds, go to host memory as at level 1); ``wake`` gives
        them fresh storage filled with NaN, so a missed refill shows at once rather than as
        plausible output from stale bytes, and the engine holds no policy (version -1) until
        ``load_weights`` refills them. Asleep, the model holds empty tensors and cannot
        generate; this engine keeps no KV cache between calls. On a GPU both levels free the
        weights' device memory. On the CPU host memory is the device: level 1 frees nothing
        (the tensors only leave the model), level 2 frees the parameters. Returns the device
        bytes freed (0 on the CPU, whose allocator is not counted) and the seconds it took.
        """
        if level not in (1, 2):
            raise EngineError(f"sleep: level must be 1 (weights to host memory) or 2 (weights discarded), "
                              f"got {level!r}")
        self._check_awake("sleep")
        start, before = time.perf_counter(), _device_bytes(self.device)
        params = dict(self.model.named_parameters())
        self._host = {}
        for name, t in self._tensors().items():
            if level == 1 or name not in params:
                self._host[name] = t.data.to("cpu")  # on the CPU: the same storage, now held here only
            else:
                self._host[name] = torch.empty(t.shape, dtype=t.dtype, device="meta")  # its shape and dtype
            t.data = t.data.new_empty(0)
        if level == 2:
            self.version = -1
        return before - _device_bytes(self.device), time.perf_counter() - start

    def wake(self) -> float:
        """Undo ``sleep``: the weights go back onto the model (after level 2, NaN-filled storage of the
        same shapes, for ``load_weights`` to fill); returns the seconds it took."""
        if self._host is None:
            raise EngineError("wake: the engine is not asleep")
        start = time.perf_counter()
        for name, t in self._tensors().items():
            kept = self._host[name]
            t.data = _unfilled(kept, self.device) if kept.is_meta else kept.to(self.device)
        self._host = None
        return time.perf_counter() - start

    @property
    def asleep(self) -> bool:
        return self._host is not None

    def close(self) -> None:
        """Nothing to release beyond memory; here so callers can close any engine."""

    @torch.inference_mode()
    def raw_generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, seed: int | None = None
    ) -> list[list[list[int]]]:
        """Plain ``model.generate`` on the same batches: the benchmark's baseline.

        Left-padded batches of at most ``max_batch`` sequences, ``num_return_sequences=n``
        (each prompt prefilled ``n`` times), pure temperature sampling (no top-k/top-p),
        no stop strings and no log-probabilities. Returns generated token ids, cut
        after the first eos.
        """
        check_generate_args(n, temperature, max_new_tokens)
        self._check_awake("raw_generate")
        ids = self._encode(prompts, max_new_tokens)
        if seed is not None:
            torch.manual_seed(seed)
        out: list[list[list[int]]] = [[] for _ in prompts]
        for chunk in self._plan([len(x) for x in ids], n):
            # generate() repeats every prompt by one count, so split chunks of mixed counts
            for count in sorted({c for _, c in chunk}):
                members = [i for i, c in chunk if c == count]
                input_ids, mask = self._left_pad([ids[i] for i in members])
                sampling = (
                    {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                    if temperature > 0
                    else {"do_sample": False}
                )
                gen = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=count,
                    pad_token_id=self.pad_id,
                    eos_token_id=sorted(self.eos_ids) or None,
                    **sampling,
                )[:, input_ids.shape[1] :].tolist()
                for j, i in enumerate(members):
                    for row in gen[j * count : (j + 1) * count]:
                        cut = next((k + 1 for k, t in enumerate(row) if t in self.eos_ids), len(row))
                        out[i].append(row[:cut])
        return out

    # ------------------------------------------------------------ internals

    def _check_awake(self, what: str) -> None:
        if self._host is not None:
            raise EngineError(f"{what}: the engine is asleep (its weights are in host memory): wake it first")

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers by name, each once (a tied weight under its first name)."""
        return {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

    def _checker(self, stops: tuple[str, ...]) -> StopChecker:
        if stops not in self._stop_checkers:
            self._stop_checkers[stops] = StopChecker(self.tokenizer, self.eos_ids, stops)
        return self._stop_checkers[stops]

    @staticmethod
    def _alias_given(key: str, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> bool:
        """Whether ``key`` shares storage with another key that ``state`` provides (tied weights)."""
        ptr = own[key].data_ptr()
        return any(k in state for k, v in own.items() if k != key and v.data_ptr() == ptr)

    def _encode(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, max_new_tokens, self.context)

    def _plan(self, lengths: list[int], n: int) -> list[list[tuple[int, int]]]:
        """Group (prompt index, sample count) pieces into chunks of at most ``max_batch`` sequences.

        Prompts of similar length go together (less padding); a prompt whose ``n``
        exceeds ``max_batch`` is split over several chunks.
        """
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        pieces = [(i, min(self.max_batch, n - s)) for i in order for s in range(0, n, self.max_batch)]
        chunks: list[list[tuple[int, int]]] = [[]]
        used = 0
        for i, c in pieces:
            if used + c > self.max_batch:
                chunks.append([])
                used = 0
            chunks[-1].append((i, c))
            used += c
        return chunks

    def _left_pad(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, width - len(x) :] = torch.tensor(x)
            mask[r, width - len(x) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def _decode_chunk(
        self,
        prompt_ids: list[list[int]],
        counts: list[int],
        temperature: float,
        max_new_tokens: int,
        checker: StopChecker,
        gen: torch.Generator,
    ) -> list[tuple[list[int], list[float]]]:
        """Prefill the chunk's prompts once, fan each out ``count`` times, decode to the end."""
        input_ids, mask = self._left_pad(prompt_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache = out.past_key_values
        fan = torch.repeat_interleave(
            torch.arange(len(counts), device=self.device), torch.tensor(counts, device=self.device)
        )
        cache.batch_select_indices(fan)
        logits, mask, next_pos = out.logits[fan, -1].float(), mask[fan], positions[fan, -1] + 1
        seqs: list[tuple[list[int], list[float]]] = [([], []) for _ in range(len(fan))]
        live = list(range(len(fan)))  # batch row -> sequence index
        finished: set[int] = set()
        for step in range(max_new_tokens):
            logprobs = torch.log_softmax(logits, dim=-1)
            if temperature == 0:
                tokens = logits.argmax(dim=-1)
            else:
                # exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i,
                # and is cheaper than torch.multinomial over a whole batch
                probs = torch.softmax(logits / temperature, dim=-1)
                tokens = (probs / torch.empty_like(probs).exponential_(generator=gen)).argmax(dim=-1)
            token_lp = logprobs.gather(1, tokens[:, None]).squeeze(1)
            for row, (tok, lp) in enumerate(zip(tokens.tolist(), token_lp.tolist(), strict=True)):
                seq = live[row]
                if seq in finished:
                    continue
                seqs[seq][0].append(tok)
                seqs[seq][1].append(lp)
                if checker.done(seqs[seq][0]):
                    finished.add(seq)
            if len(finished) == len(seqs) or step == max_new_tokens - 1:
                break
            dead = [r for r, s in enumerate(live) if s in finished]
            if dead and 4 * len(dead) >= len(live):  # drop finished rows once they are a quarter of the batch
                keep = torch.tensor([r for r, s in enumerate(live) if s not in finished], device=self.device)
                cache.batch_select_indices(keep)
                tokens, mask, next_pos = tokens[keep], mask[keep], next_pos[keep]
                live = [live[r] for r in keep.tolist()]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits, next_pos = out.logits[:, -1].float(), next_pos + 1
        return seqs
