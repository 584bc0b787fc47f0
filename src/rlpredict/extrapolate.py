"""Weight-space extrapolation of an RL run from the checkpoints of an early window.

Methods (see METHODS.md):

- ``two-point``: W' = W_t0 + α (W_t1 − W_t0), α = (t' − t0) / (t1 − t0), from the earliest and
  the latest of the given checkpoints (the RLVR-linearity operator; norm layers are copied
  from the later checkpoint by default, embeddings and lm_head are extrapolated).
- ``lstsq``: a per-parameter least-squares line over all window checkpoints, evaluated at the
  target. ``fit="free"`` fits slope and intercept; ``fit="anchored"`` forces the line through
  the base (time 0, W_0).
- ``expo``: θ = θ₁ + α (θ₁ − θ₀) with θ₀ the base and θ₁ the latest checkpoint (ExPO).
- ``relex``: rank-1 in time: the deltas δ_t = W_t − W_0 of one tensor form a (time × entries)
  matrix whose top right singular vector V₁ carries coefficients c_t = δ_t · V₁; c is fitted
  linearly in time, extrapolated, and W_0 + c(t*) V₁ is written.

Time is the step number or, with ``time="lr"``, the integral of the learning rate up to the
step (``lr_integral``), which straightens trajectories under decaying schedules.

Everything streams one tensor name at a time in fp32: two-point, lstsq and ExPO hold at most
three tensors of one name at once (whatever the number of checkpoints); RELEX holds the
window's deltas of one tensor name (its memory grows with the window length for that tensor
only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlpredict.checkpoints import ModelReader, ModelWriter, check_compatible

log = logging.getLogger(__name__)

METHODS = ("two-point", "lstsq", "expo", "relex")
FITS = ("free", "anchored")
TIME_AXES = ("step", "lr")
LR_SCHEDULES = ("constant", "linear", "cosine")

Schedule = Callable[[int], float] | Sequence[float]


# ---------------------------------------------------------------------------------------------
# Time axis


def lr_schedule(
    kind: str, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
) -> Callable[[int], float]:
    """The learning rate used by optimizer step ``s`` (0-based) for a common schedule.

    ``kind`` is ``constant``, ``linear`` (decay to ``min_lr`` at ``total_steps``) or ``cosine``
    (half cosine to ``min_lr``), each with a linear warm-up from 0 over ``warmup_steps``, as in
    transformers' ``get_*_schedule_with_warmup``.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {LR_SCHEDULES}")
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"lr schedule needs total_steps > 0 and 0 <= warmup_steps <= total_steps, "
            f"got total_steps={total_steps}, warmup_steps={warmup_steps}"
        )

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return lr * step / warmup_steps
        if kind == "constant":
            return lr
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr + (lr - min_lr) * shape

    return schedule


def lr_integral(steps: Sequence[int], schedule: Schedule) -> list[float]:
    """Integral of the learning rate up to each step: τ(n) = Σ_{s<n} lr(s).

    The weights after step n have taken the updates of optimizer steps 0..n−1. ``schedule`` is a
    callable ``step -> lr`` (e.g. from ``lr_schedule``) or a list of per-step learning rates.
    """
    steps = [int(s) for s in steps]
    if not steps:
        return []
    if min(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {sorted(steps)}")
    last = max(steps)
    if callable(schedule):
        lrs = [float(schedule(s)) for s in range(last)]
    else:
        if len(schedule) < last:
            raise ValueError(
                f"the list of per-step learning rates has {len(schedule)} entries, "
                f"but step {last} needs {last}"
            )
        lrs = [float(x) for x in schedule[:last]]
    cumulative = np.concatenate([[0.0], np.cumsum(lrs, dtype=np.float64)])
    return [float(cumulative[s]) for s in steps]


def time_axis(steps: Sequence[int], time: str = "step", schedule: Schedule | None = None) -> list:
    """Steps mapped to the extrapolation's time axis (``step`` or ``lr``)."""
    if time == "step":
        return [float(s) for s in steps]
    if time == "lr":
        if schedule is None:
            raise ValueError("time='lr' needs lr_schedule (a callable or a list of per-step lrs)")
        return lr_integral(steps, schedule)
    raise ValueError(f"unknown time axis {time!r}; choose one of {TIME_AXES}")


# ---------------------------------------------------------------------------------------------
# Per-tensor operators (pure, fp32)


def two_point(w0: torch.Tensor, w1: torch.Tensor, alpha: float) -> torch.Tensor:
    """W_t0 + α (W_t1 − W_t0)."""
    return w0 + alpha * (w1 - w0)


def two_point_alpha(t0: float, t1: float, target: float) -> float:
    """α = (t' − t0) / (t1 − t0) for the two-point operator."""
    if t1 == t0:
        raise ValueError(f"two-point extrapolation needs two distinct times, got {t0} twice")
    return (target - t0) / (t1 - t0)


def expo(theta0: torch.Tensor, theta1: torch.Tensor, alpha: float) -> torch.Tensor:
    """ExPO: θ₁ + α (θ₁ − θ₀)."""
    return theta1 + alpha * (theta1 - theta0)


def lstsq_coefficients(
    times: Sequence[float], target: float, fit: str = "free", anchor_time: float = 0.0
) -> np.ndarray:
    """Weights c_i that turn the least-squares line's value at ``target`` into a sum.

    ``fit="free"``: prediction = Σ c_i y_i (the c_i sum to 1).
    ``fit="anchored"`` (line through (anchor_time, y_a)): prediction = y_a + Σ c_i (y_i − y_a).
    The weights depend only on the times, so one pass over the tensors suffices.
    """
    x = np.asarray(times, dtype=np.float64)
    if fit == "free":
        if len(x) < 2:
            raise ValueError(f"a free least-squares line needs >= 2 points, got {len(x)}")
        centred = x - x.mean()
        sxx = float(centred @ centred)
        if sxx == 0.0:
            raise ValueError(f"a free least-squares line needs distinct times, got {list(x)}")
        return 1.0 / len(x) + centred * (target - x.mean()) / sxx
    if fit == "anchored":
        d = x - anchor_time
        sdd = float(d @ d)
        if sdd == 0.0:
            raise ValueError(
                f"an anchored least-squares line needs a point away from the anchor "
                f"(time {anchor_time}), got times {list(x)}"
            )
        return d * (target - anchor_time) / sdd
    raise ValueError(f"unknown fit {fit!r}; choose one of {FITS}")


def lstsq_extrapolate(
    tensors: Sequence[torch.Tensor],
    times: Sequence[float],
    target: float,
    *,
    fit: str = "free",
    base: torch.Tensor | None = None,
    base_time: float = 0.0,
) -> torch.Tensor:
    """Per-entry least-squares line through (times[i], tensors[i]) evaluated at ``target``.

    With ``fit="anchored"`` the line goes through (base_time, base).
    """
    coef = lstsq_coefficients(times, target, fit, base_time)
    if fit == "anchored":
        if base is None:
            raise ValueError("fit='anchored' needs the base tensor")
        ref = base
    else:
        ref = tensors[-1]
    out = ref.clone()
    for c, y in zip(coef, tensors, strict=True):
        out.add_(y - ref, alpha=float(c))
    return out


def _line_value(x: np.ndarray, y: np.ndarray, target: float, fit: str, anchor: float) -> float:
    # anchored: through (anchor, 0)
    return float(lstsq_coefficients(x, target, fit, anchor) @ y)


def relex_weights(
    gram: np.ndarray, times: Sequence[float], target: float, fit: str = "free", base_time=0.0
) -> np.ndarray:
    """Weights w_t with Δ = c(t*) V₁ = Σ w_t δ_t, from the Gram matrix G = D Dᵀ of the deltas.

    With G = E Λ Eᵀ: V₁ = Dᵀ e₁ / σ₁ and c_t = δ_t · V₁ = σ₁ e₁_t, so only the small T × T
    eigenproblem is needed. All deltas zero gives zero weights.
    """
    gram = np.asarray(gram, dtype=np.float64)
    evals, evecs = np.linalg.eigh(gram)
    lam, e1 = float(evals[-1]), evecs[:, -1]
    if not lam > 0.0:
        return np.zeros(len(e1))
    sigma = math.sqrt(lam)
    coeffs = sigma * e1
    c_target = _line_value(np.asarray(times, float), coeffs, target, fit, base_time)
    return c_target * e1 / sigma


def _gram(deltas: Sequence[torch.Tensor]) -> np.ndarray:
    n = len(deltas)
    gram = np.zeros((n, n))
    flat = [d.reshape(-1) for d in deltas]
    for i in range(n):
        for j in range(i + 1):
            gram[i, j] = gram[j, i] = float(torch.dot(flat[i], flat[j]))
    return gram


def relex_delta(
    deltas: list[torch.Tensor],
    times: Sequence[float],
    target: float,
    *,
    fit: str = "free",
    base_time: float = 0.0,
    inplace: bool = False,
) -> torch.Tensor:
    """RELEX Δ = c(t*) V₁ for one tensor from its deltas δ_t = W_t − W_0 at ``times``.

    ``inplace=True`` reuses the delta tensors' memory (they are overwritten).
    """
    weights = relex_weights(_gram(deltas), times, target, fit, base_time)
    out = deltas[0].mul_(float(weights[0])) if inplace else deltas[0] * float(weights[0])
    for w, d in zip(weights[1:], deltas[1:], strict=True):
        out.add_(d, alpha=float(w))
    return out


def relex_extrapolate(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    times: Sequence[float],
    target: float,
    *,
    fit: str = "free",
    base_time: float = 0.0,
) -> torch.Tensor:
    """W_0 + c(t*) V₁ (RELEX rank-1 in time) for one tensor."""
    deltas = [t - base for t in tensors]
    return base + relex_delta(deltas, times, target, fit=fit, base_time=base_time, inplace=True)


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """ValueError if ``tensor`` holds inf or NaN (aminmax: one pass, no temporary tensors)."""
    if tensor.numel() == 0:
        return
    lo, hi = torch.aminmax(tensor)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError(f"{what} has non-finite values")


def is_norm(name: str) -> bool:
    """Norm-layer parameters (copied rather than extrapolated by default for two-point)."""
    return "norm" in name.lower()


# ---------------------------------------------------------------------------------------------
# Model level


def _plan_inputs(method, checkpoints, base_dir, fit):
    """(window steps, base path or None) after validation of the window size for the method."""
    if method not in METHODS:
        raise ValueError(f"unknown extrapolation method {method!r}; choose one of {METHODS}")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {FITS}")
    steps = sorted(int(s) for s in checkpoints)
    if steps and steps[0] < 0:
        raise ValueError(f"checkpoint steps must be >= 0, got {steps}")
    needs_base = method in ("expo", "relex") or (method == "lstsq" and fit == "anchored")
    base = None
    if needs_base:
        base = Path(base_dir) if base_dir is not None else checkpoints.get(0)
        if base is None:
            raise ValueError(
                f"method {method!r} needs the base model: pass base_dir or include step 0 "
                f"in the checkpoints (got steps {steps})"
            )
        window = [s for s in steps if s > 0]
    else:
        window = steps
    need = {"two-point": 2, "lstsq": 2 if fit == "free" else 1, "expo": 1, "relex": 2}[method]
    if len(window) < need:
        what = " besides the base" if needs_base else ""
        raise ValueError(
            f"method {method!r}{' (fit=' + fit + ')' if method == 'lstsq' else ''} needs at least "
            f"{need} window checkpoint(s){what}, got {len(window)} (steps {window})"
        )
    return window, base


def extrapolate_weights(
    method: str,
    checkpoints: dict[int, Path],
    target_step: int | None,
    out_dir: str | Path,
    *,
    base_dir: str | Path | None = None,
    alpha: float | None = None,
    fit: str = "free",
    time: str = "step",
    lr_schedule: Schedule | None = None,
    copy_norms: bool | None = None,
    out_dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 2**30,
    progress: bool = True,
) -> Path:
    """Write the extrapolated model to ``out_dir`` (an HF dir) and return its path.

    Args:
        method: ``two-point``, ``lstsq``, ``expo`` or ``relex`` (see the module docstring).
        checkpoints: window checkpoints, step → HF model dir. Step 0, when present, is the base.
            ``two-point`` uses the earliest and the latest; ``lstsq`` with ``fit="free"`` uses
            all of them; anchored ``lstsq``, ``expo`` and ``relex`` use those after step 0.
        target_step: the step to extrapolate to; must lie after the last window checkpoint.
            ``two-point`` and ``expo`` accept ``alpha`` instead (then pass None here).
        base_dir: the base model (step 0) for ``expo``, anchored ``lstsq`` and ``relex``
            (default: ``checkpoints[0]``); the other methods do not use it.
        alpha: the operator's α for ``two-point`` (W_t0 + α(W_t1 − W_t0)) or ``expo``
            (θ₁ + α(θ₁ − θ₀)), instead of ``target_step``.
        fit: ``free`` (slope and intercept) or ``anchored`` (through the base at time 0), for
            ``lstsq`` and for the line fitted to the RELEX coefficients.
        time: ``step`` or ``lr`` (time is the integral of the learning rate, see
            ``lr_integral``; needs ``lr_schedule``: a callable step → lr or per-step lrs).
        copy_norms: copy tensors whose name contains "norm" from the latest checkpoint instead
            of extrapolating them. Default: True for ``two-point`` and ``lstsq`` (the RLVR-
            linearity paper's choice), False for ``expo`` and ``relex`` (every tensor).
        out_dtype: dtype of the written tensors (arithmetic is always fp32).
        max_shard_bytes: shard size of the output.

    Raises:
        ValueError: unknown method/fit/time, too few window checkpoints for the method, missing
            base, target step inside the window, α given together with a target step.
        CheckpointError: unreadable, truncated, mismatched or non-finite checkpoints.
        Nothing is left at ``out_dir`` when an error occurs.
    """
    checkpoints = {int(s): Path(p) for s, p in checkpoints.items()}
    window, base = _plan_inputs(method, checkpoints, base_dir, fit)
    last = window[-1]
    if alpha is not None and method not in ("two-point", "expo"):
        raise ValueError(f"alpha applies to two-point and expo only, not to {method!r}")
    if alpha is not None and target_step is not None:
        raise ValueError("give either target_step or alpha, not both")
    if alpha is None and target_step is None:
        raise ValueError(f"method {method!r} needs target_step (or alpha for two-point/expo)")
    if target_step is not None and target_step <= last:
        raise ValueError(
            f"target step {target_step} is inside the window (its last checkpoint is step "
            f"{last}); extrapolation needs a later step"
        )
    if copy_norms is None:
        copy_norms = method in ("two-point", "lstsq")

    if method == "two-point":
        window = [window[0], window[-1]]
    elif method == "expo":
        window = [last]
    # times of base (0) and window, and of the target
    all_steps = [0, *window] + ([target_step] if target_step is not None else [])
    taus = dict(zip(all_steps, time_axis(all_steps, time, lr_schedule), strict=True))
    target = taus[target_step] if target_step is not None else None

    if method == "two-point":
        a = alpha if alpha is not None else two_point_alpha(taus[window[0]], taus[last], target)
        ref, combo = window[0], [(a, last)]
    elif method == "expo":
        if alpha is None:
            alpha = two_point_alpha(taus[0], taus[last], target) - 1.0
        ref, combo = "base", [(1.0 + alpha, last)]
    elif method == "lstsq":
        coef = lstsq_coefficients([taus[s] for s in window], target, fit, taus[0])
        ref = "base" if fit == "anchored" else last
        combo = [(float(c), s) for c, s in zip(coef, window, strict=True) if s != ref]
    else:
        ref, combo = "base", None
    log.info(
        "extrapolate %s: window steps %s, target step %s, time=%s, fit=%s, terms %s",
        method,
        window,
        target_step,
        time,
        fit,
        combo,
    )

    paths = {s: Path(checkpoints[s]) for s in window}
    if base is not None:
        paths["base"] = Path(base)
    with ExitStack() as stack:
        readers = {k: stack.enter_context(ModelReader(p)) for k, p in paths.items()}
        first = readers[ref]
        for key, reader in readers.items():
            if key != ref:
                check_compatible(first, reader)
        writer = stack.enter_context(
            ModelWriter(
                out_dir,
                paths[last],
                dtype=out_dtype,
                max_shard_bytes=max_shard_bytes,
                inputs=paths.values(),
            )
        )
        names = first.names()
        for name in tqdm(names, desc=f"extrapolate {method}", disable=not progress):
            if copy_norms and is_norm(name):
                out = readers[last].get(name)
            elif method == "relex":
                out = _relex_tensor(name, readers, window, taus, target, fit)
            else:
                out = _combine(name, readers, ref, combo)
            check_finite(out, f"extrapolated tensor {name!r}")
            writer.add(name, out)
            del out
        return Path(writer.finish())


def _combine(name, readers, ref, combo) -> torch.Tensor:
    """ref + Σ c (W − ref), holding at most three tensors of this name (two for one term)."""
    base = readers[ref].get(name)
    if len(combo) == 1:
        c, key = combo[0]
        return base.lerp_(readers[key].get(name), c)  # one fused pass
    acc = None
    for c, key in combo:
        y = readers[key].get(name)
        y.sub_(base).mul_(c)
        if acc is None:
            acc = y
        else:
            acc.add_(y)
            del y
    if acc is None:
        return base
    return acc.add_(base)


def _relex_tensor(name, readers, window, taus, target, fit) -> torch.Tensor:
    base = readers["base"].get(name)
    deltas = [readers[s].get(name).sub_(base) for s in window]
    times = [taus[s] for s in window]
    delta = relex_delta(deltas, times, target, fit=fit, base_time=taus[0], inplace=True)
    return delta.add_(base)
