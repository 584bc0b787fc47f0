"""Top-k SVD of weight updates ΔW = W_t − W_0, rank-k reconstruction and spectrum tables.

``top_k_svd`` computes the k leading singular triplets of a matrix in fp32, on the matrix's
device (CUDA when the input is there, CPU otherwise):

- ``method="randomized"``: randomized subspace iteration (Halko, Martinsson & Tropp 2011,
  Algorithm 4.4): a seeded Gaussian test matrix with ``k + oversample`` columns, power
  iterations with a QR re-orthonormalisation after every product with A or Aᵀ, and the SVD
  of the small projected matrix (Rayleigh–Ritz). By default (``krylov=True``) the
  Rayleigh–Ritz step uses the span of all iterates, the block Krylov space
  {Ω, AᵀAΩ, (AᵀA)²Ω, …} (Musco & Musco 2015), kept orthonormal by block Gram–Schmidt. That
  space contains every iterate, so it is never less accurate (for one extra product with A),
  and it converges with the square root of the relative gap rather than the gap itself: on a
  flat spectrum with σ_1/σ_2 = 1.05 it needs about 10 iterations where Rayleigh–Ritz on the
  last iterate needs about 30. ``krylov=False`` gives the textbook algorithm.
- ``method="exact"``: ``torch.linalg.svd`` (thin, of the tall orientation), truncated to k.
- ``method="auto"`` (default): exact when ``min(m, n) <= 32 * (k + oversample)`` (there
  LAPACK is as fast on noise-like matrices), randomized otherwise.

Accuracy check of the randomized method. Every iteration yields the Ritz values (the singular
values of the projected matrix) at no extra cost. After at least ``n_iter`` power
iterations, the iteration stops when the estimated remaining error of σ_1..σ_k, relative to
σ_1, is at most ``tol``. The estimate extrapolates the convergence of the Ritz values
geometrically (Aitken): with δ_j the largest change of σ_1..σ_k between iterations j−1 and j
and ρ = δ_j / δ_{j−1}, the remaining error is about δ_j·ρ/(1−ρ). Spectra that decay at all
stop after 3–6 iterations; flat ones (σ_1/σ_2 = 1.05 on a Marchenko–Pastur noise floor)
after 8–13. If the check has not passed after ``max_iter`` iterations (or once the Krylov
basis would outgrow the matrix), the exact SVD is used instead and a warning is logged.
``tol=None`` turns the check off: exactly ``n_iter`` iterations, no fallback.

The defaults (block k + 3, at least 3 iterations, tol 1e-5) were tuned on 1.5B-shaped
matrices with σ_1/σ_2 = 1.05 on flat and slowly decaying spectra (benchmarks/spectral.py):
worst σ_1 relative error 1e-5, worst |cos(u_1, u_1_exact)| 0.99995 (targets 1e-4, 0.999).
The check is an estimate, not a bound. Singular vectors are accurate to about
(σ error)/(relative gap): well defined when σ_i stands apart from σ_{i+1}, arbitrary within a
cluster of equal singular values.

Sign convention: each u_i is flipped so that its largest-magnitude entry is positive (v_i
with it), which makes results deterministic for one input. SVD signs carry no meaning, so
code that follows vectors across checkpoints should align neighbours by the sign of their
cosine, not rely on this convention.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from rlpredict.checkpoints import ModelReader, check_compatible, check_finite

log = logging.getLogger(__name__)

DEFAULT_MODULE_REGEX = (
    r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$"
)
METHODS = ("auto", "randomized", "exact")
# "auto" takes the exact SVD when min(m, n) <= AUTO_EXACT_FACTOR * (k + oversample): there
# LAPACK beats the iteration on noise-like matrices (measured on one core).
AUTO_EXACT_FACTOR = 32

# A Ritz-value change this small (relative to σ_1) is fp32 round-off: the iteration has converged.
_ROUNDOFF = 8 * torch.finfo(torch.float32).eps


def top_k_svd(
    matrix: torch.Tensor,
    k: int,
    *,
    method: str = "auto",
    oversample: int = 3,
    n_iter: int = 3,
    seed: int = 0,
    tol: float | None = 1e-5,
    max_iter: int = 40,
    krylov: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k leading singular triplets of a 2-D matrix: U [m, k], S [k] (descending), Vh [k, n].

    fp32 on the matrix's device; the input is not modified. ``n_iter`` is the minimum number of
    power iterations of the randomized method, ``max_iter`` the maximum before it falls back to
    the exact SVD, ``tol`` the accepted estimated error of σ_1..σ_k relative to σ_1 (see the
    module docstring); ``tol=None`` runs exactly ``n_iter`` iterations without the check.
    """
    if matrix.ndim != 2:
        raise ValueError(f"top_k_svd needs a 2-D matrix, got shape {list(matrix.shape)}")
    m, n = matrix.shape
    if not 1 <= k <= min(m, n):
        raise ValueError(f"k={k} is outside 1..{min(m, n)} for a {m}×{n} matrix")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if oversample < 0 or n_iter < 0 or max_iter < n_iter:
        raise ValueError(
            f"need oversample >= 0 and 0 <= n_iter <= max_iter, got oversample={oversample}, "
            f"n_iter={n_iter}, max_iter={max_iter}"
        )
    a = matrix.detach().to(torch.float32)
    # The norm is a cheap screen: finite means every entry is; 0 means all are 0 (or tiny).
    norm = float(torch.linalg.vector_norm(a))
    if not math.isfinite(norm):
        check_finite(a, f"top_k_svd: the {m}×{n} matrix", error=ValueError)
    if method == "auto":
        method = "exact" if min(m, n) <= AUTO_EXACT_FACTOR * (k + oversample) else "randomized"
    if norm == 0.0 and not bool(a.any()):
        return _zero_triplets(a, k)
    result = None
    if method == "randomized":
        block = min(k + oversample, m, n)
        limit = n_iter if tol is None else max_iter
        if krylov:  # the Krylov basis may not outgrow the matrix
            limit = min(limit, min(m, n) // block - 1)
        run = _block_krylov if krylov else _subspace_iteration
        result = run(a, k, block, limit, seed, _Monitor(k, n_iter, tol))
        if result is None:
            log.warning(
                "randomized SVD of a %d×%d matrix did not converge in %d iterations (tol=%s): "
                "using the exact SVD",
                m,
                n,
                limit,
                tol,
            )
    if result is None:
        result = _exact_svd(a, k)
    return _fix_signs(*result)


def _exact_svd(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if a.shape[0] < a.shape[1]:
        # LAPACK is 3–4× faster on the tall orientation (1536×8960: 8.4 s vs 2.3 s, one core).
        U, S, Vh = torch.linalg.svd(a.mT, full_matrices=False)
        return Vh[:k].mT, S[:k], U[:, :k].mT
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    return U[:, :k], S[:k], Vh[:k]


def _mul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A·w for a thin w, as (wᵀAᵀ)ᵀ: the small operand on the left runs 1.5–2× faster on CPU."""
    return (w.mT @ a.mT).mT


def _mul_t(a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Aᵀ·q for a thin q, as (qᵀA)ᵀ."""
    return (q.mT @ a).mT


def _test_matrix(a: torch.Tensor, block: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Drawn on the CPU so that CPU and CUDA start from the same test matrix.
    return torch.randn(a.shape[1], block, generator=gen).to(a.device)


class _Monitor:
    """Stopping rule: ``n_iter`` iterations without tol, else the Aitken estimate ≤ tol."""

    def __init__(self, k: int, n_iter: int, tol: float | None):
        self.k, self.n_iter, self.tol = k, n_iter, tol
        self.prev_ritz: torch.Tensor | None = None
        self.prev_change: float | None = None

    def done(self, it: int, small: torch.Tensor) -> bool:
        """Whether to stop after iteration ``it``; the Ritz values are ``small``'s."""
        if self.tol is None:
            return it >= self.n_iter
        ritz = torch.linalg.svdvals(small)[: self.k]
        stop = False
        if self.prev_ritz is not None:
            change = float((ritz - self.prev_ritz).abs().max() / ritz[0].clamp_min(1e-30))
            stop = it >= self.n_iter and _converged(change, self.prev_change, self.tol)
            self.prev_change = change
        self.prev_ritz = ritz
        return stop


def _subspace_iteration(
    a: torch.Tensor, k: int, block: int, limit: int, seed: int, monitor: _Monitor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Halko et al. Algorithm 4.4, Rayleigh–Ritz on the last iterate; None if not converged."""
    w = _test_matrix(a, block, seed)
    for it in range(limit + 1):
        q = torch.linalg.qr(_mul(a, w)).Q
        # Aᵀq = w r, so the projected matrix qᵀA = rᵀwᵀ has r's singular values.
        w, r = torch.linalg.qr(_mul_t(a, q))
        if monitor.done(it, r):
            break
    else:
        return None
    log.debug("randomized SVD of a %d×%d matrix: %d power iterations", *a.shape, it)
    ur, s, vrh = torch.linalg.svd(r.mT)
    return q @ ur[:, :k], s[:k], vrh[:k] @ w.mT


def _orthonormalize(y: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning y's component outside span(basis) (which may be empty).

    Block Gram–Schmidt twice, then QR. When that removed nearly all of y (y lay inside the
    span: a converged or rank-deficient iteration), the QR has normalised round-off, so it
    is projected and orthonormalised once more.
    """
    if basis.shape[1] == 0:
        return torch.linalg.qr(y).Q
    before = torch.linalg.vector_norm(y, dim=0)
    for _ in range(2):
        y = y - basis @ (basis.mT @ y)
    q = torch.linalg.qr(y).Q
    if bool((torch.linalg.vector_norm(y, dim=0) < 0.1 * before).any()):
        q = torch.linalg.qr(q - basis @ (basis.mT @ q)).Q
    return q


def _block_krylov(
    a: torch.Tensor, k: int, block: int, limit: int, seed: int, monitor: _Monitor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The same power iterations, Rayleigh–Ritz on the span of all iterates; None if not converged.

    P = [p_0 … p_j] spans the block Krylov space {Ω, AᵀAΩ, …} and Q = [q_0 … q_j] spans A·P,
    both kept orthonormal; T = QᵀAP is built from the products A·p_i already computed, so the
    Ritz values come for free every iteration. span(P) contains every subspace iterate from
    the same Ω, so for one extra product with A this is never less accurate than
    Rayleigh–Ritz on the last iterate alone, and it converges with the square root of the
    relative gap instead of the gap.
    """
    (m, n), size = a.shape, block * (limit + 1)
    qs = torch.empty(m, size, device=a.device)
    ps = torch.empty(n, size, device=a.device)
    t = torch.zeros(size, size, device=a.device)
    ps[:, :block] = _orthonormalize(_test_matrix(a, block, seed), ps[:, :0])
    for it in range(limit + 1):
        lo, hi = it * block, (it + 1) * block
        y = _mul(a, ps[:, lo:hi])
        qs[:, lo:hi] = _orthonormalize(y, qs[:, :lo])
        t[:hi, lo:hi] = qs[:, :hi].mT @ y
        if monitor.done(it, t[:hi, :hi]):
            break
        if it < limit:
            ps[:, hi : hi + block] = _orthonormalize(_mul_t(a, qs[:, lo:hi]), ps[:, :hi])
    else:
        return None
    log.debug("randomized SVD of a %d×%d matrix: %d power iterations", *a.shape, it)
    ut, s, vth = torch.linalg.svd(t[:hi, :hi])
    return qs[:, :hi] @ ut[:, :k], s[:k], vth[:k] @ ps[:, :hi].mT


def _converged(change: float, prev_change: float | None, tol: float) -> bool:
    if change <= _ROUNDOFF:
        return True
    if prev_change is None or prev_change <= 0:
        return False
    rate = min(change / prev_change, 0.99)
    return change * rate / (1 - rate) <= tol


def _zero_triplets(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, n = a.shape
    eye = torch.eye(max(m, n), k, device=a.device)
    return eye[:m], torch.zeros(k, device=a.device), eye[:n].mT.contiguous()


def _fix_signs(
    U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = U.abs().argmax(dim=0)
    sign = torch.sign(U.gather(0, idx[None, :]))[0]
    sign[sign == 0] = 1.0
    return (U * sign).contiguous(), S.contiguous(), (Vh * sign[:, None]).contiguous()


def rank_k_approx(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    """ΔW⁽ᵏ⁾ = U diag(S) Vh."""
    return (U * S) @ Vh


def frobenius_scale(delta: torch.Tensor, approx: torch.Tensor) -> float:
    """α = ‖ΔW‖_F / ‖ΔW⁽ᵏ⁾‖_F; 1.0 when the approximation is zero."""
    denom = float(torch.linalg.vector_norm(approx.float()))
    if denom == 0.0:
        return 1.0
    return float(torch.linalg.vector_norm(delta.float())) / denom


# ---------------------------------------------------------------------------------------
# Spectrum tables

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)(?:\.|$)")


def parse_module_name(name: str) -> tuple[int | None, str]:
    """(layer index or None, module kind) of a tensor name.

    ``model.layers.3.mlp.down_proj.weight`` → ``(3, "down_proj")``;
    ``model.embed_tokens.weight`` → ``(None, "embed_tokens")``.
    """
    match = _LAYER.search(name)
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    return (int(match.group(1)) if match else None), parts[-1]


def _step_of(checkpoint_dir: Path) -> int | None:
    match = re.fullmatch(r"step_(\d+)", checkpoint_dir.name)
    return int(match.group(1)) if match else None


def matched_names(reader: ModelReader, module_regex: str) -> list[str]:
    """Names of the 2-D tensors the regex selects; ValueError if it is invalid or selects none."""
    try:
        pattern = re.compile(module_regex)
    except re.error as err:
        raise ValueError(f"invalid module regex {module_regex!r}: {err}") from None
    names = [n for n in reader.names() if pattern.search(n) and len(reader.shape(n)) == 2]
    if not names:
        raise ValueError(
            f"module regex {module_regex!r} matches no 2-D tensor in {reader.model_dir} "
            f"(e.g. {reader.names()[0]!r})"
        )
    return names


def spectrum_table(
    base_dir: str | Path,
    checkpoint_dir: str | Path,
    k: int = 8,
    module_regex: str = DEFAULT_MODULE_REGEX,
    step: int | None = None,
    keep_vectors: bool = False,
    *,
    method: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per 2-D tensor matching ``module_regex``: the spectrum of ΔW = W_ckpt − W_base.

    Columns: step, module, layer, kind, rows, cols, sigma_1..sigma_k (NaN beyond min(rows,
    cols)), fro_norm ‖ΔW‖_F, energy_share_1 = σ_1²/‖ΔW‖_F², energy_share_k = Σ_{i≤k} σ_i²/‖ΔW‖_F²
    (NaN when ΔW = 0), and with ``keep_vectors`` u1 and v1 (lists). ``step`` defaults to N of
    a ``step_N`` checkpoint dir. Tensors are read one pair at a time; the SVD runs on
    ``device`` (default: CUDA when available).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    checkpoint_dir = Path(checkpoint_dir)
    if step is None:
        step = _step_of(checkpoint_dir)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with ModelReader(base_dir) as base, ModelReader(checkpoint_dir) as ckpt:
        check_compatible(base, ckpt)
        names = matched_names(base, module_regex)
        for name in tqdm(
            names, desc=f"spectrum {checkpoint_dir.name}", unit="tensor", disable=not progress
        ):
            delta = ckpt.get(name).to(device)
            delta -= base.get(name).to(device)
            rows.append(_spectrum_row(name, delta, k, step, keep_vectors, method))
            del delta
    table = pd.DataFrame(rows)
    return table.astype({"step": "Int64", "layer": "Int64"})


def _spectrum_row(
    name: str, delta: torch.Tensor, k: int, step: int | None, keep_vectors: bool, method: str
) -> dict:
    layer, kind = parse_module_name(name)
    m, n = delta.shape
    kk = min(k, m, n)
    U, S, Vh = top_k_svd(delta, kk, method=method)
    sigma = S.double().cpu().tolist() + [float("nan")] * (k - kk)
    fro = float(torch.linalg.vector_norm(delta).double())
    energy = fro**2
    row = {"step": step, "module": name, "layer": layer, "kind": kind, "rows": m, "cols": n}
    row.update({f"sigma_{i + 1}": s for i, s in enumerate(sigma)})
    row["fro_norm"] = fro
    row["energy_share_1"] = sigma[0] ** 2 / energy if energy > 0 else float("nan")
    row["energy_share_k"] = sum(s**2 for s in sigma[:kk]) / energy if energy > 0 else float("nan")
    if keep_vectors:
        row["u1"] = U[:, 0].cpu().tolist()
        row["v1"] = Vh[0].cpu().tolist()
    return row
