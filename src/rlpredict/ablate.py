"""Rank-k ablation of an RL update (AlphaRL's Rank-1 Dominance, METHODS.md §1a).

For every matrix whose name matches the module regex, ΔW = W_t − W_0 is replaced by
λ·α·ΔW⁽ᵏ⁾ (its top-k SVD terms, α = ‖ΔW‖_F / ‖ΔW⁽ᵏ⁾‖_F for ``scale="frobenius"``, 1 for
``"none"``); every other tensor keeps the base value. The model is streamed one tensor at a
time from both dirs into a ModelWriter, so memory stays at a few tensors.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlpredict import spectral
from rlpredict.checkpoints import ModelReader, ModelWriter, check_compatible

SCALES = ("frobenius", "none")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def parse_rank(rank: int | str) -> int | Fraction | str:
    """An int k ≥ 1, a Fraction for "p%" (0 < p ≤ 100), or "full"."""
    if isinstance(rank, bool):
        raise ValueError(f"invalid rank {rank!r}")
    if isinstance(rank, int):
        value = rank
    else:
        text = str(rank).strip().lower()
        if text == "full":
            return "full"
        try:
            if text.endswith("%"):
                pct = Fraction(text[:-1])
                if not 0 < pct <= 100:
                    raise ValueError
                return pct / 100
            value = int(text)
        except ValueError:
            raise ValueError(
                f"invalid rank {rank!r}: use an integer ≥ 1, a percentage like '10%', or 'full'"
            ) from None
    if value < 1:
        raise ValueError(f"invalid rank {rank!r}: must be at least 1")
    return value


def rank_for(rank: int | Fraction | str, shape: tuple[int, ...]) -> int:
    """The number of singular terms kept for a matrix of this shape (parsed rank)."""
    full = min(shape)
    if rank == "full":
        return full
    if isinstance(rank, Fraction):
        return max(1, math.ceil(rank * full))
    return min(int(rank), full)


def _stats(delta: torch.Tensor, S: torch.Tensor, k: int, alpha: float, lam: float) -> dict:
    fro = float(torch.linalg.matrix_norm(delta))
    energy = fro**2
    sigma1 = float(S[0]) if len(S) else 0.0
    return {
        "shape": list(delta.shape),
        "k": k,
        "fro_norm": fro,
        "sigma_1": sigma1,
        "energy_share": sigma1**2 / energy if energy > 0 else 0.0,
        "energy_kept": float((S.double() ** 2).sum()) / energy if energy > 0 else 0.0,
        "alpha": alpha,
        "lam": lam,
    }


def ablate_matrix(
    w0: torch.Tensor, wt: torch.Tensor, k: int, *, scale: str = "frobenius", lam: float = 1.0
) -> tuple[torch.Tensor, dict]:
    """W_0 + λ·α·ΔW⁽ᵏ⁾ and its stats. Consumes both inputs (their storage is reused)."""
    delta = wt.sub_(w0)
    U, S, Vh = spectral.top_k_svd(delta, k)
    approx = spectral.rank_k_approx(U, S, Vh)
    alpha = spectral.frobenius_scale(delta, approx) if scale == "frobenius" else 1.0
    stats = _stats(delta, S, k, alpha, lam)
    del delta, wt
    return w0.add_(approx, alpha=lam * alpha), stats


def full_update(w0: torch.Tensor, wt: torch.Tensor, lam: float = 1.0) -> tuple[torch.Tensor, dict]:
    """W_0 + λ·ΔW (the whole update, α = 1); with λ = 1 exactly W_t. Consumes both inputs."""
    delta = wt - w0
    _, S, _ = spectral.top_k_svd(delta, 1)
    stats = _stats(delta, S, min(delta.shape), 1.0, lam)
    stats["energy_kept"] = 1.0
    if lam == 1.0:
        return wt, stats
    del wt
    return w0.add_(delta, alpha=lam), stats


def ablate_model(
    base_dir: str | Path,
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    rank: int | str,
    scale: str = "frobenius",
    lam: float = 1.0,
    module_regex: str = spectral.DEFAULT_MODULE_REGEX,
    out_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict:
    """Write W_0 + λ·α·ΔW⁽ᵏ⁾ (base_dir plus the ablated update of checkpoint_dir) to out_dir.

    ``rank`` is an int k, a percentage "p%" (ceil(p/100 · min(m, n)) per matrix, at least 1),
    or "full" (the checkpoint's own ΔW; with λ = 1 the checkpoint's weights exactly). Returns
    the settings and, under "modules", per-matrix stats: k, ‖ΔW‖_F, σ₁, energy share
    σ₁²/‖ΔW‖_F², energy kept Σᵢ≤ₖσᵢ²/‖ΔW‖_F², α, λ. The arithmetic runs on ``device``
    (default: CUDA when available), one matrix at a time.
    """
    if scale not in SCALES:
        raise ValueError(f"invalid scale {scale!r}: use one of {', '.join(SCALES)}")
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"invalid lam {lam!r}: must be finite")
    parsed = parse_rank(rank)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with ModelReader(base_dir) as base, ModelReader(checkpoint_dir) as ckpt:
        check_compatible(base, ckpt)
        matched = set(spectral.matched_names(base, module_regex))
        # The trained model's tokenizer and generation config, unless it has none.
        has_tokenizer = any((Path(checkpoint_dir) / n).is_file() for n in TOKENIZER_FILES)
        template = checkpoint_dir if has_tokenizer else base_dir
        modules: dict[str, dict] = {}
        inputs = (base_dir, checkpoint_dir)
        with ModelWriter(out_dir, template, dtype=out_dtype, inputs=inputs) as writer:
            names = base.names()
            for name in tqdm(names, desc="ablate", unit="tensor", disable=not progress):
                w0 = base.get(name)
                if name in matched:
                    w0, wt = w0.to(device), ckpt.get(name).to(device)
                    if parsed == "full":
                        w0, modules[name] = full_update(w0, wt, lam)
                    else:
                        k = rank_for(parsed, base.shape(name))
                        w0, modules[name] = ablate_matrix(w0, wt, k, scale=scale, lam=lam)
                    del wt
                writer.add(name, w0)
                del w0
            writer.finish()
    return {
        "base_dir": str(base_dir),
        "checkpoint_dir": str(checkpoint_dir),
        "out_dir": str(out_dir),
        "rank": str(rank),
        "scale": scale,
        "lam": lam,
        "module_regex": module_regex,
        "modules": modules,
    }
