"""lm-eval models of rlpredict; importing this module registers them with lm-eval.

``rlpredict-logit-extrap`` runs logits extrapolation (:mod:`rlpredict.logits`) on any lm-eval
task (generation and log-likelihood), with the chat template when lm-eval is asked for one
(``apply_chat_template=True``)::

    import rlpredict.lm_eval_models  # registers rlpredict-logit-extrap

    lm_eval.simple_evaluate(
        model="rlpredict-logit-extrap",
        model_args="pretrained0=DIR0,pretrained1=DIR1,alpha=1.5,dtype=float32,device=cpu",
        tasks=[...],
    )

lm-eval is the optional "eval" extra: importing this module without it raises ImportError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import lm_eval.models  # noqa: F401  keeps lm-eval's own models reachable once we register
import torch
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from rlpredict.decoding import (
    TokenPair,
    check_models,
    cut_at_stop,
    encode_text,
    left_pad,
    load_models,
    load_tokenizer,
    max_context_length,
    stop_token_ids,
)
from rlpredict.logits import generate_extrapolated, logit_mixer, score_extrapolated

log = logging.getLogger(__name__)


@register_model("rlpredict-logit-extrap")
class LogitExtrapolationLM(TemplateLM):
    """lm-eval model: two checkpoints mixed on raw logits (see :mod:`rlpredict.logits`).

    model_args: ``pretrained0``, ``pretrained1`` (HF dirs), ``alpha`` (default 1.0),
    ``tokenizer`` (default ``pretrained1``), ``batch_size``, ``dtype``, ``device``,
    ``max_length``, ``max_gen_toks`` (default 256), ``seed`` (sampling generator; default:
    torch's global RNG, which lm-eval seeds).
    Supported gen_kwargs: until, max_gen_toks, do_sample, temperature, top_p, top_k.
    A response ends at the first of the task's ``until`` strings or the models' stop tokens
    (:func:`rlpredict.decoding.stop_token_ids`). ``apply_chat_template=True`` in lm-eval
    renders prompts with the tokenizer's chat template (:meth:`apply_chat_template`).
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
        check_models(self.models, logit_mixer(self.alpha))  # one vocabulary, before any request
        self.tokenizer = load_tokenizer(tokenizer or pretrained1)
        self._device = torch.device(device)
        self.batch_size = _parse_batch_size(batch_size)
        self._max_length = int(max_length) if max_length else max_context_length(self.models)
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
        scored = score_extrapolated(
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
            new = generate_extrapolated(
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
