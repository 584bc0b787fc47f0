"""Logits extrapolation: two checkpoints of one run decoding in lockstep, mixed on raw logits.

Two checkpoints of one run, ``model0`` (earlier, step t0) and ``model1`` (later, step t1), read
the same tokens, each with its own KV cache (:mod:`rlpredict.decoding`). At every position their
RAW logits are mixed in fp32 as ``mixed = l0 + alpha * (l1 - l0)`` (``alpha = (t' - t0) / (t1 -
t0)`` extrapolates to step t'), then temperature, top-k and top-p are applied and the next token
is sampled (or taken greedily); the chosen token is fed to both models. Log-likelihoods are
scored with ``log_softmax(mixed)``. ``alpha = 1`` reproduces ``model1`` and ``alpha = 0``
reproduces ``model0`` exactly (``torch.lerp`` returns its end points bit for bit).

The lm-eval model that runs logits extrapolation on any lm-eval task,
``rlpredict-logit-extrap``, lives in :mod:`rlpredict.lm_eval_models`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlpredict.decoding import LogitsCombiner, TokenPair, generate_tokens, score_tokens


def mix_logits(logits0: torch.Tensor, logits1: torch.Tensor, alpha: float) -> torch.Tensor:
    """``l0 + alpha * (l1 - l0)`` in fp32 (any matching shapes); exact at ``alpha`` 0 and 1."""
    return torch.lerp(logits0.float(), logits1.float(), float(alpha))


def logit_mixer(alpha: float) -> LogitsCombiner:
    """The :data:`rlpredict.decoding.LogitsCombiner` of logits extrapolation: the logits of
    (model0, model1) mixed by :func:`mix_logits` with ``alpha``. The function it returns
    raises ValueError when given the logits of more or fewer than two models.
    """

    def mixed(logits: Sequence[torch.Tensor]) -> torch.Tensor:
        check_pair(logits)
        return mix_logits(logits[0], logits[1], alpha)

    return mixed


def check_pair(models: Sequence) -> None:
    """Raise ValueError unless ``models`` holds exactly two entries (model0, model1)."""
    if len(models) != 2:
        raise ValueError(f"logits extrapolation mixes two models, got {len(models)}")


def generate_extrapolated(
    models: Sequence[torch.nn.Module],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    alpha: float = 1.0,
    **decoding_kw: Any,
) -> torch.Tensor:
    """Decode a left-padded batch [B, L] with (model0, model1) mixed by ``alpha``.

    The other keywords (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
    ``do_sample``, ``eos_token_id``, ``pad_token_id``, ``stop_strings``, ``tokenizer``,
    ``generator``) and the result, the new tokens [B, n], are those of
    :func:`rlpredict.decoding.generate_tokens`.

    Raises:
        ValueError: not two models, models with different vocabularies, or ``stop_strings``
            without a ``tokenizer``.
    """
    check_pair(models)
    return generate_tokens(
        models, input_ids, attention_mask, combine=logit_mixer(alpha), **decoding_kw
    )


def score_extrapolated(
    models: Sequence[torch.nn.Module],
    requests: Sequence[TokenPair],
    *,
    alpha: float = 1.0,
    **scoring_kw: Any,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forced log-probs of each continuation under ``log_softmax`` of the logits of
    (model0, model1) mixed by ``alpha``.

    The other keywords (``batch_size``, ``pad_token_id``, ``max_length``) and the result, per
    request the token log-probs [n] (fp32, CPU) and whether each token is the argmax [n], are
    those of :func:`rlpredict.decoding.score_tokens`.

    Raises:
        ValueError: not two models, models with different vocabularies, or a request that
            :func:`rlpredict.decoding.score_tokens` refuses.
    """
    check_pair(models)
    return score_tokens(models, requests, combine=logit_mixer(alpha), **scoring_kw)
