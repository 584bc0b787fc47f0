"""Batched decoding and token scoring for HF causal LMs, with a KV cache per model.

One path for every analysis that generates or scores text with a checkpoint:

- :func:`generate_tokens` decodes a left-padded batch with a KV cache; the log-prob
  linearity analysis uses it to write its probe responses.
- :func:`score_tokens` returns the teacher-forced log-prob of every continuation token; the
  log-prob linearity analysis scores its probes with it at every checkpoint.

Both take a sequence of models that read the same tokens in lockstep, each with its own KV
cache, and a ``combine`` function that turns their logits into the fp32 logits the next token
is chosen from (or scored with). Without ``combine`` they take exactly one model and use its
own logits; logits extrapolation (:mod:`rlpredict.logits`) passes two models and its mixing
rule.

Generation stops at the model's stop tokens (:func:`stop_token_ids`: the tokenizer's EOS, the
EOS ids of each model's config and generation config, and the end-of-turn token of its chat
template), as lm-eval's HF backend and vLLM stop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from rlpredict.checkpoints import CheckpointError

TokenPair = tuple[Sequence[int], Sequence[int]]
"""A (context_ids, continuation_ids) pair to score."""

LogitsCombiner = Callable[[Sequence[torch.Tensor]], torch.Tensor]
"""Maps the logits of each model (one [B, T, V] tensor per model, in model order) to the fp32
logits [B, T, V] that decoding samples from and scoring takes ``log_softmax`` of."""


def own_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The default :data:`LogitsCombiner`: the one model's logits in fp32.

    Raises:
        ValueError: more or fewer than one set of logits.
    """
    if len(logits) != 1:
        raise ValueError(f"without a combine function decoding takes one model, got {len(logits)}")
    return logits[0].float()


def check_models(models: Sequence[torch.nn.Module], combine: LogitsCombiner | None = None) -> None:
    """Check that ``models`` can decode together.

    Raises:
        ValueError: no model, more than one model without ``combine``, or models whose
            vocabulary sizes differ.
    """
    if not models:
        raise ValueError("decoding needs at least one model")
    if combine is None and len(models) != 1:
        raise ValueError(f"without a combine function decoding takes one model, got {len(models)}")
    vocab = {m.config.get_text_config().vocab_size for m in models}
    if len(vocab) != 1:
        raise ValueError(f"the models have different vocabulary sizes: {sorted(vocab)}")


def _forward(
    models: Sequence[torch.nn.Module],
    combine: LogitsCombiner,
    caches: Sequence | None = None,
    **forward_kw,
) -> torch.Tensor:
    """fp32 logits of the models combined by ``combine``, each model with its own cache."""
    caches = caches or [None] * len(models)
    return combine(
        [m(past_key_values=c, **forward_kw).logits for m, c in zip(models, caches, strict=True)]
    )


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

    Greedy when ``do_sample`` is False, or when it is None and ``temperature`` is 0. Returns
    the token ids [B] (int64).
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
    combine: LogitsCombiner | None = None,
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
    """Decode a left-padded batch [B, L] (``attention_mask`` 1 on real tokens) with a KV cache.

    ``models`` read the same tokens in lockstep, each with its own KV cache; the next token is
    chosen (:func:`sample_next_token`) from ``combine`` of their logits (default: the one
    model's own logits). Returns the new tokens [B, n] (n ≤ ``max_new_tokens``): a row that
    produced an EOS token or whose decoded text contains one of ``stop_strings`` (needs
    ``tokenizer``) is finished and padded with ``pad_token_id`` from then on, as in
    ``transformers``' ``generate``; decoding stops when every row is finished.

    Raises:
        ValueError: models that cannot decode together (:func:`check_models`), or
            ``stop_strings`` without a ``tokenizer``.
    """
    check_models(models, combine)
    combine = combine or own_logits
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
            combine,
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
    combine: LogitsCombiner | None = None,
    batch_size: int = 16,
    pad_token_id: int = 0,
    max_length: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forced log-probs of each continuation given its context.

    ``requests`` are (context_ids, continuation_ids) pairs, both non-empty. Returns per
    request the log-prob of every continuation token [n] under ``log_softmax`` of ``combine``
    of the models' logits (default: the one model's own logits), fp32 on the CPU, and whether
    each token is the argmax [n] (bool). Batches are left-padded; with ``max_length`` the
    input is left-truncated to its last ``max_length`` tokens.

    Raises:
        ValueError: models that cannot decode together (:func:`check_models`), an empty
            context or continuation, or a continuation longer than ``max_length``.
    """
    check_models(models, combine)
    combine = combine or own_logits
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
        # and a combination that returns one model's logits must reproduce its scores exactly
        logits = _forward(
            models,
            combine,
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
    """Load HF causal LMs in eval mode (``dtype``: float32, bfloat16, float16 or auto).

    Raises:
        CheckpointError: a model dir that does not exist.
    """
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


def max_context_length(models: Sequence[torch.nn.Module], default: int = 2048) -> int:
    """The shortest ``max_position_embeddings`` of the models' configs, in tokens
    (``default`` when no config states one)."""
    lengths = [getattr(m.config.get_text_config(), "max_position_embeddings", None) for m in models]
    lengths = [n for n in lengths if n]
    return min(lengths) if lengths else default


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
