"""Logits extrapolation: two causal LMs decoding in lockstep.

Two checkpoints of one run, ``model0`` (earlier, step t0) and ``model1`` (later, step t1), read
the same tokens, each with its own KV cache. At every position their RAW logits are mixed in
fp32 as ``mixed = l0 + alpha * (l1 - l0)`` (``alpha = (t' - t0) / (t1 - t0)`` extrapolates to
step t'), then temperature, top-k and top-p are applied and the next token is sampled (or taken
greedily); the chosen token is fed to both models. Log-likelihoods are scored with
``log_softmax(mixed)``. ``alpha = 1`` reproduces ``model1`` and ``alpha = 0`` reproduces ``model0``
exactly (``torch.lerp`` returns its end points bit for bit).

The functions take a sequence of one or two models: with one model they are plain decoding and
teacher-forced scoring, which the linearity analyses reuse.

Generation stops at the model's stop tokens (:func:`stop_token_ids`: the tokenizer's EOS, the
EOS ids of each model's config and generation config, and the end-of-turn token of its chat
template), as lm-eval's HF backend and vLLM stop.

Importing this module registers the lm-eval model ``rlpredict-logit-extrap`` (when lm-eval is
installed); it runs any lm-eval task (generation and log-likelihood), with the chat template
when lm-eval is asked for one (``apply_chat_template=True``)::

    lm_eval.simple_evaluate(
        model="rlpredict-logit-extrap",
        model_args="pretrained0=DIR0,pretrained1=DIR1,alpha=1.5,dtype=float32,device=cpu",
        tasks=[...],
    )
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from rlpredict.checkpoints import CheckpointError

log = logging.getLogger(__name__)

TokenPair = tuple[Sequence[int], Sequence[int]]


def mix_logits(logits0: torch.Tensor, logits1: torch.Tensor, alpha: float) -> torch.Tensor:
    """``l0 + alpha * (l1 - l0)`` in fp32; exact at ``alpha`` 0 and 1."""
    return torch.lerp(logits0.float(), logits1.float(), float(alpha))


def _forward(
    models: Sequence[torch.nn.Module], alpha: float, caches: Sequence | None = None, **forward_kw
) -> torch.Tensor:
    """fp32 logits of one model, or the mixture of two, each model with its own cache."""
    caches = caches or [None] * len(models)
    logits = [
        m(past_key_values=c, **forward_kw).logits for m, c in zip(models, caches, strict=True)
    ]
    if len(logits) == 1:
        return logits[0].float()
    return mix_logits(logits[0], logits[1], alpha)


def _check_models(models: Sequence[torch.nn.Module]) -> None:
    if len(models) not in (1, 2):
        raise ValueError(f"expected one or two models, got {len(models)}")
    vocab = {m.config.get_text_config().vocab_size for m in models}
    if len(vocab) != 1:
        raise ValueError(f"the two models have different vocabulary sizes: {sorted(vocab)}")


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` [B, V]: greedy, or temperature → top-k → top-p → sample.

    Greedy when ``do_sample`` is False, or when it is None and ``temperature`` is 0.
    """
    if do_sample is None:
        do_sample = temperature > 0
    if not do_sample or temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = (probs.cumsum(dim=-1) - probs) > top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # same as transformers' generate: count real tokens, pads get position 0
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


@torch.inference_mode()
def generate_tokens(
    models: Sequence[torch.nn.Module],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    alpha: float = 1.0,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    do_sample: bool | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    stop_strings: Sequence[str] = (),
    tokenizer=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode a left-padded batch with one model or two mixed models, each with its own KV cache.

    Returns the new tokens [B, n] (n ≤ ``max_new_tokens``): a row that produced an EOS token or
    whose decoded text contains one of ``stop_strings`` (needs ``tokenizer``) is finished and
    padded with ``pad_token_id`` from then on, as in ``transformers``' ``generate``; decoding stops
    when every row is finished.
    """
    _check_models(models)
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    device = models[0].device
    input_ids = input_ids.to(device)
    batch, prompt_len = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    if eos_token_id is None:
        eos_token_id = []
    eos = torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
        dtype=torch.long,
        device=device,
    )
    # a stop string ends in the newest token and spans at most one token per character;
    # the slack keeps it clear of decoding effects at the start of the decoded window
    window = max((len(s) for s in stop_strings), default=0) + 8
    full_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens)], dim=1)
    caches = tuple(DynamicCache(config=m.config) for m in models)
    position_ids = _position_ids(attention_mask)
    step_input = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        logits = _forward(
            models,
            alpha,
            caches,
            input_ids=step_input,
            attention_mask=full_mask[:, : prompt_len + step],
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        token = sample_next_token(
            logits[:, -1],
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            do_sample=do_sample,
            generator=generator,
        )
        token = token.masked_fill(finished, pad_token_id)
        new_tokens.append(token)
        if eos.numel():
            finished |= torch.isin(token, eos)
        if stop_strings:
            recent = torch.stack(new_tokens[-window:], dim=1)
            finished |= _hit_stop_strings(recent, finished, stop_strings, tokenizer)
        if bool(finished.all()):
            break
        step_input = token[:, None]
        position_ids = position_ids[:, -1:] + 1
    if not new_tokens:
        return input_ids.new_zeros(batch, 0)
    return torch.stack(new_tokens, dim=1)


def _hit_stop_strings(recent, finished, stop_strings, tokenizer) -> torch.Tensor:
    """Rows not yet finished whose recent tokens decode to text containing a stop string."""
    hit = torch.zeros_like(finished)
    rows = (~finished).nonzero().flatten().tolist()
    if not rows:
        return hit
    tokens = recent[rows].tolist()
    for row, text in zip(
        rows, tokenizer.batch_decode(tokens, skip_special_tokens=True), strict=True
    ):
        hit[row] = any(s in text for s in stop_strings)
    return hit


def left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as a left-padded batch: ids [B, L] (``pad_token_id`` in front) and the
    attention mask [B, L] (1 on real tokens), L the longest length. The mask, not the id,
    marks padding: a pad id that also occurs in the text (e.g. an EOS used as pad) is fine."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


@torch.inference_mode()
def score_tokens(
    models: Sequence[torch.nn.Module],
    requests: Sequence[TokenPair],
    *,
    alpha: float = 1.0,
    batch_size: int = 16,
    pad_token_id: int = 0,
    max_length: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forced log-probs of each continuation given its context.

    ``requests`` are (context_ids, continuation_ids) pairs with a non-empty context. Returns per
    request the log-prob of every continuation token under ``log_softmax`` of the (mixed) logits,
    fp32 on the CPU, and whether each token is the argmax. Batches are left-padded; with
    ``max_length`` the input is left-truncated to its last ``max_length`` tokens.
    """
    _check_models(models)
    device = models[0].device
    inputs, cont_lens = [], []
    for ctx, cont in requests:
        if len(ctx) == 0 or len(cont) == 0:
            raise ValueError("every request needs a non-empty context and continuation")
        full = list(ctx) + list(cont)
        if max_length is not None:
            if len(cont) > max_length:
                raise ValueError(
                    f"continuation of {len(cont)} tokens exceeds max_length {max_length}"
                )
            full = full[-(max_length + 1) :]
        inputs.append(full[:-1])
        cont_lens.append(len(cont))
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(inputs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([inputs[i] for i in idx], pad_token_id)
        # full logits (no logits_to_keep): a narrower lm_head matmul changes the last bits,
        # and alpha = 1 must reproduce the later model's own scores exactly
        logits = _forward(
            models,
            alpha,
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=_position_ids(mask).to(device),
        )
        for row, i in enumerate(idx):
            row_logits = logits[row, -cont_lens[i] :]
            logprobs = F.log_softmax(row_logits, dim=-1)
            target = torch.as_tensor(list(requests[i][1]), device=logprobs.device)
            token_lp = logprobs.gather(-1, target[:, None]).squeeze(-1)
            greedy = row_logits.argmax(dim=-1) == target
            results[i] = (token_lp.cpu(), greedy.cpu())
    return results  # type: ignore[return-value]


def load_models(
    model_dirs: Sequence[str | Path], *, dtype: str = "float32", device: str = "cpu"
) -> list[torch.nn.Module]:
    """Load HF causal LMs in eval mode (``dtype``: float32, bfloat16, float16 or auto)."""
    torch_dtype = dtype if dtype == "auto" else getattr(torch, str(dtype))
    models = []
    for d in model_dirs:
        if not Path(d).is_dir():
            raise CheckpointError(f"{d}: model dir not found")
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch_dtype)
        models.append(model.to(device).eval())
    return models


def load_tokenizer(model_dir: str | Path):
    """The model dir's tokenizer with left padding (pad falls back to EOS)."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def end_of_turn_id(tokenizer) -> int | None:
    """The special token that ends an assistant turn in the tokenizer's chat template.

    Found by rendering a short conversation and reading the first token after the assistant's
    text (``<|im_end|>`` for ChatML templates, ``<|eot_id|>`` for Llama 3). None when the
    tokenizer has no chat template or the template ends a turn with ordinary text.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "rlpredict end-of-turn marker"
    messages = [{"role": "user", "content": "1"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses this conversation: no end-of-turn token known
        return None
    if marker not in text:
        return None
    tail = tokenizer.encode(text.split(marker, 1)[1], add_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return tail[0] if tail and tail[0] in special else None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def stop_token_ids(tokenizer, models: Sequence[torch.nn.Module] = ()) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS, the EOS ids of each model's config
    and generation config, and the chat template's end-of-turn token (sorted, no repeats).

    The pad token is not a stop token unless it is one of these (SmolLM2 pads with its EOS
    ``<|im_end|>``); padding positions are told apart by the attention mask, never by id.
    """
    ids = _ids(tokenizer.eos_token_id) + _ids(end_of_turn_id(tokenizer))
    for model in models:
        ids += _ids(model.config.get_text_config().eos_token_id)
        generation_config = getattr(model, "generation_config", None)
        ids += _ids(getattr(generation_config, "eos_token_id", None))
    return sorted(set(ids))


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int], keep_stop: bool) -> list[int]:
    """``tokens`` up to the first stop token (included when ``keep_stop``)."""
    stops = set(stop_ids)
    for i, token in enumerate(tokens):
        if token in stops:
            return list(tokens[: i + 1 if keep_stop else i])
    return list(tokens)


def encode_text(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """Token ids of ``text`` as lm-eval's HF backend encodes a prompt: with the tokenizer's own
    special tokens (e.g. a BOS) unless ``add_special_tokens`` says otherwise or the text already
    starts with the BOS token (a chat template that writes its own)."""
    if add_special_tokens is None:
        bos = tokenizer.bos_token
        add_special_tokens = not (bos and text.startswith(bos))
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def _max_length(models: Sequence[torch.nn.Module], default: int = 2048) -> int:
    lengths = [getattr(m.config.get_text_config(), "max_position_embeddings", None) for m in models]
    lengths = [n for n in lengths if n]
    return min(lengths) if lengths else default


try:
    import lm_eval.models  # noqa: F401  keeps lm-eval's own models reachable once we register
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # lm-eval is the optional "eval" extra
    TemplateLM = None

if TemplateLM is not None:

    @register_model("rlpredict-logit-extrap")
    class LogitExtrapolationLM(TemplateLM):
        """lm-eval model: two checkpoints mixed on raw logits (see the module docstring).

        model_args: ``pretrained0``, ``pretrained1`` (HF dirs), ``alpha`` (default 1.0),
        ``tokenizer`` (default ``pretrained1``), ``batch_size``, ``dtype``, ``device``,
        ``max_length``, ``max_gen_toks`` (default 256), ``seed`` (sampling generator; default:
        torch's global RNG, which lm-eval seeds).
        Supported gen_kwargs: until, max_gen_toks, do_sample, temperature, top_p, top_k.
        A response ends at the first of the task's ``until`` strings or the models' stop tokens
        (:func:`stop_token_ids`). ``apply_chat_template=True`` in lm-eval renders prompts with
        the tokenizer's chat template (:meth:`apply_chat_template`).
        """

        GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k"}

        def __init__(
            self,
            pretrained0: str,
            pretrained1: str,
            alpha: float = 1.0,
            tokenizer: str | None = None,
            batch_size: int | str = 16,
            max_batch_size: int | None = None,
            dtype: str = "float32",
            device: str | None = "cpu",
            max_length: int | None = None,
            max_gen_toks: int = 256,
            seed: int | None = None,
            **kwargs,
        ) -> None:
            super().__init__()
            if kwargs:
                raise TypeError(f"unknown model_args for rlpredict-logit-extrap: {sorted(kwargs)}")
            self.alpha = float(alpha)
            device = device or "cpu"
            self.models = load_models([pretrained0, pretrained1], dtype=dtype, device=device)
            _check_models(self.models)
            self.tokenizer = load_tokenizer(tokenizer or pretrained1)
            self._device = torch.device(device)
            self.batch_size = _parse_batch_size(batch_size)
            self._max_length = int(max_length) if max_length else _max_length(self.models)
            self.max_gen_toks = int(max_gen_toks)
            self.generator = None
            if seed is not None:
                self.generator = torch.Generator(device=self._device).manual_seed(int(seed))
            self.stop_ids = stop_token_ids(self.tokenizer, self.models)

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:
            if self.tokenizer.bos_token_id is not None:
                return self.tokenizer.bos_token_id
            return self.tokenizer.eos_token_id

        @property
        def max_length(self) -> int:
            return self._max_length

        @property
        def tokenizer_name(self) -> str:
            return self.tokenizer.name_or_path.replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list:
            return encode_text(self.tokenizer, string, add_special_tokens)

        def apply_chat_template(
            self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
        ) -> str:
            """The chat history rendered with the tokenizer's chat template, as lm-eval's HF
            backend renders it (for one user message: ``rlpredict.tasks.prompts.render_prompt``).
            """
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    f"{self.tokenizer.name_or_path}: apply_chat_template needs a tokenizer "
                    "with a chat template, and this one has none"
                )
            return self.tokenizer.apply_chat_template(
                chat_history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

        def tok_decode(self, tokens) -> str:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

        def _score(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
            scored = score_tokens(
                self.models,
                pairs,
                alpha=self.alpha,
                batch_size=self.batch_size,
                pad_token_id=self.tokenizer.pad_token_id,
                max_length=self.max_length,
            )
            return [(float(lp.double().sum()), bool(g.all())) for lp, g in scored]

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
            answers = self._score([(ctx, cont) for _, ctx, cont in requests])
            for (key, _, _), answer in zip(requests, answers, strict=True):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return answers

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            windows, owner = [], []
            for i, (string,) in enumerate(req.args for req in requests):
                token_windows = lm_eval_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
                for window in map(lm_eval_utils.make_disjoint_window, token_windows):
                    windows.append(window)
                    owner.append(i)
            totals = [0.0] * len(requests)
            for i, (lp, _) in zip(owner, self._score(windows) if windows else [], strict=True):
                totals[i] += lp
            for req, total in zip(requests, totals, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            results: list[str | None] = [None] * len(requests)
            groups: dict[str, list[int]] = {}
            for i, req in enumerate(requests):
                key = json.dumps(req.args[1], sort_keys=True, default=str)
                groups.setdefault(key, []).append(i)
            for members in groups.values():
                for i, text in self._generate_group(requests, members):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
            return results  # type: ignore[return-value]

        def _generate_group(self, requests, members: list[int]):
            """Yield (request index, text) for requests that share one gen_kwargs dict."""
            gen_kwargs = dict(requests[members[0]].args[1])
            unknown = set(gen_kwargs) - self.GEN_KWARGS
            if unknown:
                raise ValueError(
                    f"rlpredict-logit-extrap does not support gen_kwargs {sorted(unknown)}; "
                    f"supported: {sorted(self.GEN_KWARGS)}"
                )
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            budget = max(self.max_length - max_gen, 1)
            contexts = {i: self.tok_encode(requests[i].args[0])[-budget:] for i in members}
            # longest first, so each batch pads little
            members = sorted(members, key=lambda i: -len(contexts[i]))
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                ids, mask = left_pad([contexts[i] for i in batch], self.pad_id)
                new = generate_tokens(
                    self.models,
                    ids,
                    mask,
                    alpha=self.alpha,
                    max_new_tokens=max_gen,
                    temperature=float(gen_kwargs.get("temperature", 0.0)),
                    top_p=float(gen_kwargs.get("top_p", 1.0)),
                    top_k=int(gen_kwargs.get("top_k", 0) or 0),
                    do_sample=gen_kwargs.get("do_sample"),
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    stop_strings=until,
                    tokenizer=self.tokenizer,
                    generator=self.generator,
                )
                for i, row in zip(batch, new.tolist(), strict=True):
                    yield i, self._finish_text(row, until)

        @property
        def pad_id(self) -> int:
            return self.tokenizer.pad_token_id

        def _finish_text(self, tokens: list[int], until: Sequence[str]) -> str:
            text = self.tok_decode(cut_at_stop(tokens, self.stop_ids, keep_stop=False))
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            return text


def _parse_batch_size(batch_size: int | str) -> int:
    if isinstance(batch_size, int):
        return max(batch_size, 1)
    text = str(batch_size)
    if text.isdigit():
        return max(int(text), 1)
    log.warning("batch_size=%s is not supported; using 16", batch_size)
    return 16
