"""Weight-space extrapolation of an RL run from the checkpoints of an early window.

Methods (see METHODS.md; names and specs in the registry ``rlpredict.methods``):

- ``two-point``: W' = W_t0 + α (W_t1 − W_t0), α = (t' − t0) / (t1 − t0), from the earliest and
  the latest of the given checkpoints (the RLVR-linearity operator; norm layers are copied
  from the later checkpoint by default, embeddings and lm_head are extrapolated).
- ``lstsq-free`` and ``lstsq-anchored`` (``lstsq`` with ``fit="free"`` or ``"anchored"``): a
  per-parameter least-squares line over all window checkpoints, evaluated at the target; the
  free line fits slope and intercept, the anchored one goes through the base (time 0, W_0).
- ``expo``: θ = θ₁ + α (θ₁ − θ₀) with θ₀ the base and θ₁ the latest checkpoint (ExPO).
- ``relex``: rank-1 in time: the deltas δ_t = W_t − W_0 of one tensor form a (time × entries)
  matrix whose top right singular vector V₁ carries coefficients c_t = δ_t · V₁; c is fitted
  linearly in time, extrapolated, and W_0 + c(t*) V₁ is written.

Time is the step number or, with ``time="lr"``, the integral of the learning rate up to the
step (``lr_integral``), which straightens trajectories under decaying schedules.

A run is planned first (``plan_extrapolation``: which checkpoints, which coefficients, which
times; pure) and then executed by one streaming executor (``stream_model``) that calls the
method's per-tensor operator, the same pure functions the property tests exercise. The plan is
written next to the weights as ``rlpredict_plan.json`` (method, steps, coefficients, time axis,
lr schedule, package version).

Everything streams one tensor name at a time in fp32: two-point, lstsq and ExPO hold at most
three tensors of one name at once (whatever the number of checkpoints); RELEX holds the
window's deltas of one tensor name (its memory grows with the window length for that tensor
only).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlpredict import __version__, schedules
from rlpredict.checkpoints import ModelReader, ModelWriter, check_compatible, check_finite
from rlpredict.methods import BASE, FITS, METHODS, REGISTRY, Method, weight_method

log = logging.getLogger(__name__)

TIME_AXES = ("step", "lr")
# The schedules live in the torch-free rlpredict.schedules; re-exported here.
LR_SCHEDULES = schedules.LR_SCHEDULES
LRSchedule = schedules.LRSchedule
lr_schedule = schedules.lr_schedule
PLAN_FILE = "rlpredict_plan.json"  # provenance written into every predicted model dir

Schedule = Callable[[int], float] | Sequence[float]
Key = int | str  # a checkpoint's step, or BASE


# ---------------------------------------------------------------------------------------------
# Time axis


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


def linear_combination(
    ref: torch.Tensor, terms: Iterable[tuple[float, torch.Tensor]], *, inplace: bool = False
) -> torch.Tensor:
    """W_ref + Σ c (W − W_ref) over ``terms`` of (c, W), consumed one at a time.

    Holds at most three tensors of the shape at once (ref, the running sum and one term),
    whatever the number of terms; one term is a single fused pass (``torch.lerp``). The
    operator every linear method (two-point, ExPO, least squares) reduces to.

    Args:
        ref: the reference tensor W_ref.
        terms: (coefficient, tensor) pairs, each tensor shaped like ``ref``.
        inplace: reuse the memory of ``ref`` and of the term tensors (they are overwritten);
            the result may then be ``ref`` itself.
    """
    it = iter(terms)
    first = next(it, None)
    if first is None:
        return ref if inplace else ref.clone()
    second = next(it, None)
    if second is None:
        c, y = first
        return ref.lerp_(y, float(c)) if inplace else torch.lerp(ref, y, float(c))
    acc = None
    for c, y in chain([first, second], it):
        y = y.sub_(ref) if inplace else y - ref
        y.mul_(float(c))
        if acc is None:
            acc = y
        else:
            acc.add_(y)
        del y
    return acc.add_(ref)


def two_point(
    w0: torch.Tensor, w1: torch.Tensor, alpha: float, *, inplace: bool = False
) -> torch.Tensor:
    """W_t0 + α (W_t1 − W_t0) (``inplace=True`` overwrites ``w0``)."""
    return linear_combination(w0, [(alpha, w1)], inplace=inplace)


def two_point_alpha(t0: float, t1: float, target: float) -> float:
    """α = (t' − t0) / (t1 − t0) for the two-point operator."""
    if t1 == t0:
        raise ValueError(f"two-point extrapolation needs two distinct times, got {t0} twice")
    return (target - t0) / (t1 - t0)


def expo(
    theta0: torch.Tensor, theta1: torch.Tensor, alpha: float, *, inplace: bool = False
) -> torch.Tensor:
    """ExPO: θ₁ + α (θ₁ − θ₀), computed as θ₀ + (1 + α)(θ₁ − θ₀) (``inplace=True``
    overwrites ``theta0``)."""
    return linear_combination(theta0, [(1.0 + alpha, theta1)], inplace=inplace)


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


def lstsq_terms(
    times: Sequence[float], target: float, fit: str = "free", base_time: float = 0.0
) -> tuple[int | None, list[tuple[float, int]]]:
    """(reference, terms) of the least-squares line at ``target`` as a linear combination:
    value = y_ref + Σ c (y_i − y_ref) over terms (c, i) with i an index into ``times``.

    The reference is the base (None) for ``fit="anchored"`` and the last point for
    ``fit="free"`` (whose own term, zero, is left out).
    """
    coef = lstsq_coefficients(times, target, fit, base_time)
    ref = None if fit == "anchored" else len(coef) - 1
    return ref, [(float(c), i) for i, c in enumerate(coef) if i != ref]


def lstsq_extrapolate(
    tensors: Sequence[torch.Tensor],
    times: Sequence[float],
    target: float,
    *,
    fit: str = "free",
    base: torch.Tensor | None = None,
    base_time: float = 0.0,
    inplace: bool = False,
) -> torch.Tensor:
    """Per-entry least-squares line through (times[i], tensors[i]) evaluated at ``target``.

    With ``fit="anchored"`` the line goes through (base_time, base). ``tensors`` is indexed,
    each entry once, so it may read them lazily (see ``LazyTensors``); ``inplace=True``
    overwrites them and ``base``.
    """
    if fit == "anchored" and base is None:
        lstsq_coefficients(times, target, fit, base_time)  # its errors first
        raise ValueError("fit='anchored' needs the base tensor")
    ref, terms = lstsq_terms(times, target, fit, base_time)
    reference = base if ref is None else tensors[ref]
    return linear_combination(reference, ((c, tensors[i]) for c, i in terms), inplace=inplace)


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
    tensors: Iterable[torch.Tensor],
    times: Sequence[float],
    target: float,
    *,
    fit: str = "free",
    base_time: float = 0.0,
    inplace: bool = False,
) -> torch.Tensor:
    """W_0 + c(t*) V₁ (RELEX rank-1 in time) for one tensor.

    ``tensors`` (W_t at ``times``) are consumed one at a time; the deltas of all of them are
    held at once. ``inplace=True`` overwrites the tensors.
    """
    deltas = [t.sub_(base) if inplace else t - base for t in tensors]
    delta = relex_delta(deltas, times, target, fit=fit, base_time=base_time, inplace=True)
    return delta.add_(base)


def is_norm(name: str) -> bool:
    """Norm-layer parameters (copied rather than extrapolated by default for two-point)."""
    return "norm" in name.lower()


class LazyTensors(Sequence):
    """The tensors of one name in several models, read when indexed (each read is fresh)."""

    def __init__(self, load: Callable[[Key], torch.Tensor], keys: Sequence[Key]):
        self._load, self._keys = load, list(keys)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._load(self._keys[index])

    def __len__(self) -> int:
        return len(self._keys)


# ---------------------------------------------------------------------------------------------
# Plan: what a weight-space method does, decided before any tensor is read


@dataclass(frozen=True)
class ExtrapolationPlan:
    """A weight-space extrapolation, decided from steps and times alone (no tensor read).

    The output is W_ref + Σ c (W_step − W_ref) over ``terms`` for the linear methods; RELEX
    (``terms`` None) finds its weights per tensor. ``times`` maps step 0 (the base), the window
    steps and the target step to the time axis.
    """

    method: str  # registry name
    window: tuple[int, ...]  # checkpoints the operator reads (besides the base), in step order
    uses_base: bool
    reference: Key  # the model the terms are added to; its tensor names (and order) are kept
    terms: tuple[tuple[float, int], ...] | None
    alpha: float | None  # the two-point or ExPO α
    fit: str
    time: str
    times: dict[int, float]
    target_step: int | None
    copy_norms: bool
    lr_schedule: object = None  # as recorded: LRSchedule fields, per-step lrs or a repr

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def last(self) -> int:
        return self.window[-1]

    @property
    def window_times(self) -> list[float]:
        return [self.times[s] for s in self.window]

    @property
    def target_time(self) -> float | None:
        return None if self.target_step is None else self.times[self.target_step]

    @property
    def base_time(self) -> float:
        return self.times[0]

    def record(self) -> dict:
        """The plan as JSON-able provenance (written next to the model as ``PLAN_FILE``)."""
        return {
            "method": self.method,
            "steps": ([0] if self.uses_base else []) + list(self.window),
            "window": list(self.window),
            "base": self.uses_base,
            "target_step": self.target_step,
            "alpha": self.alpha,
            "fit": self.fit,
            "reference": self.reference,
            "formula": "W_reference + sum(coefficient * (W_step - W_reference))"
            if self.terms is not None
            else "W_base + c(target) V1 (rank 1 in time, per tensor)",
            "coefficients": None
            if self.terms is None
            else [{"step": s, "coefficient": c} for c, s in self.terms],
            "time": self.time,
            "times": [[s, t] for s, t in sorted(self.times.items())],
            "lr_schedule": self.lr_schedule,
            "copy_norms": self.copy_norms,
            "rlpredict_version": __version__,
        }


def _schedule_record(schedule: Schedule | None) -> object:
    if schedule is None:
        return None
    if isinstance(schedule, LRSchedule):
        return asdict(schedule)
    if callable(schedule):
        return repr(schedule)
    return [float(x) for x in schedule]


def _window(method: Method, steps: list[int], base_given: bool) -> list[int]:
    """The window checkpoints ``method`` reads, after checking it has enough of them."""
    if steps and steps[0] < 0:
        raise ValueError(f"checkpoint steps must be >= 0, got {steps}")
    window = steps
    if method.needs_base:
        if not base_given and 0 not in steps:
            raise ValueError(
                f"method {method.name!r} needs the base model: pass base_dir or include step 0 "
                f"in the checkpoints (got steps {steps})"
            )
        window = [s for s in steps if s > 0]
    if len(window) < method.min_window:
        what = " besides the base" if method.needs_base else ""
        raise ValueError(
            f"method {method.name!r} needs at least {method.min_window} window checkpoint(s)"
            f"{what}, got {len(window)} (steps {window})"
        )
    return {"ends": [window[0], window[-1]], "last": [window[-1]], "all": window}[method.reads]


def plan_extrapolation(
    method: str,
    steps: Sequence[int],
    target_step: int | None,
    *,
    base_given: bool = False,
    alpha: float | None = None,
    fit: str = "free",
    time: str = "step",
    lr_schedule: Schedule | None = None,
    copy_norms: bool | None = None,
) -> ExtrapolationPlan:
    """The plan of ``extrapolate_weights`` (same arguments; ``steps`` are the checkpoints'
    steps, ``base_given`` whether a base dir is passed besides them). Pure: reads nothing.

    Raises:
        ValueError: as ``extrapolate_weights``.
    """
    spec = weight_method(method, fit)
    window = _window(spec, sorted(int(s) for s in steps), base_given)
    last = window[-1]
    if alpha is not None and not spec.takes_alpha:
        takes = " and ".join(m.name for m in REGISTRY if m.takes_alpha and m.operator)
        raise ValueError(f"alpha applies to {takes} only, not to {method!r}")
    if alpha is not None and target_step is not None:
        raise ValueError("give either target_step or alpha, not both")
    if alpha is None and target_step is None:
        raise ValueError(f"method {method!r} needs target_step (or alpha for two-point/expo)")
    if target_step is not None and target_step <= last:
        raise ValueError(
            f"target step {target_step} is inside the window (its last checkpoint is step "
            f"{last}); extrapolation needs a later step"
        )
    all_steps = [0, *window] + ([target_step] if target_step is not None else [])
    times = dict(zip(all_steps, time_axis(all_steps, time, lr_schedule), strict=True))
    target = times[target_step] if target_step is not None else None
    operator = spec.tensor_operator()
    reference, terms, alpha = operator.plan(window, times, target, alpha, spec.fit)
    return ExtrapolationPlan(
        method=spec.name,
        window=tuple(window),
        uses_base=spec.needs_base,
        reference=reference,
        terms=None if terms is None else tuple(terms),
        alpha=alpha,
        fit=spec.fit or fit,
        time=time,
        times=times,
        target_step=target_step,
        copy_norms=spec.copy_norms if copy_norms is None else copy_norms,
        lr_schedule=_schedule_record(lr_schedule) if time == "lr" else None,
    )


# Each weight-space method's operator (named in the registry): ``plan`` turns steps and
# times into (reference, terms, α); ``tensor`` computes one tensor name of the output from a
# loader of that name's tensors (``load(step)`` or ``load(BASE)``), calling the pure operator.


class TwoPointOperator:
    """``two_point`` of the earliest and latest window checkpoint."""

    @staticmethod
    def plan(window, times, target, alpha, fit):
        first, last = window[0], window[-1]
        if alpha is None:
            alpha = two_point_alpha(times[first], times[last], target)
        return first, [(alpha, last)], alpha

    @staticmethod
    def tensor(plan: ExtrapolationPlan, load) -> torch.Tensor:
        return two_point(load(plan.window[0]), load(plan.last), plan.alpha, inplace=True)


class ExpoOperator:
    """``expo`` of the base and the latest window checkpoint."""

    @staticmethod
    def plan(window, times, target, alpha, fit):
        last = window[-1]
        if alpha is None:
            alpha = two_point_alpha(times[0], times[last], target) - 1.0
        return BASE, [(1.0 + alpha, last)], alpha

    @staticmethod
    def tensor(plan: ExtrapolationPlan, load) -> torch.Tensor:
        return expo(load(BASE), load(plan.last), plan.alpha, inplace=True)


class LeastSquaresOperator:
    """``lstsq_extrapolate`` over the window, free or anchored at the base."""

    @staticmethod
    def plan(window, times, target, alpha, fit):
        ref, terms = lstsq_terms([times[s] for s in window], target, fit, times[0])
        reference = BASE if ref is None else window[ref]
        return reference, [(c, window[i]) for c, i in terms], None

    @staticmethod
    def tensor(plan: ExtrapolationPlan, load) -> torch.Tensor:
        return lstsq_extrapolate(
            LazyTensors(load, plan.window),
            plan.window_times,
            plan.target_time,
            fit=plan.fit,
            base=load(BASE) if plan.uses_base else None,
            base_time=plan.base_time,
            inplace=True,
        )


class RelexOperator:
    """``relex_extrapolate`` over the window (weights found per tensor)."""

    @staticmethod
    def plan(window, times, target, alpha, fit):
        return BASE, None, None

    @staticmethod
    def tensor(plan: ExtrapolationPlan, load) -> torch.Tensor:
        return relex_extrapolate(
            load(BASE),
            (load(s) for s in plan.window),
            plan.window_times,
            plan.target_time,
            fit=plan.fit,
            base_time=plan.base_time,
            inplace=True,
        )


# ---------------------------------------------------------------------------------------------
# Executor: one streaming pass, one tensor name at a time


def write_plan(model_dir: Path, record: dict) -> None:
    """Write ``record`` as ``PLAN_FILE`` into ``model_dir`` (the provenance of a model)."""
    text = json.dumps(record, indent=1, default=str) + "\n"
    (Path(model_dir) / PLAN_FILE).write_text(text)


def open_models(stack: ExitStack, paths: dict[Key, Path], reference: Key) -> dict:
    """Readers of ``paths`` (opened in order, closed with ``stack``), each checked to hold
    the same architecture and tensors as the one of ``reference`` (CheckpointError)."""
    readers = {key: stack.enter_context(ModelReader(path)) for key, path in paths.items()}
    for key, reader in readers.items():
        if key != reference:
            check_compatible(readers[reference], reader)
    return readers


def stream_model(
    paths: dict[Key, Path],
    reference: Key,
    template: Key,
    out_dir: str | Path,
    tensor_of: Callable[[str, dict[Key, ModelReader]], torch.Tensor],
    *,
    record: dict,
    what: str,
    desc: str,
    out_dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 2**30,
    progress: bool = True,
    start: Callable[[dict[Key, ModelReader]], None] | None = None,
) -> Path:
    """Write the model whose tensor ``name`` is ``tensor_of(name, readers)`` to ``out_dir``.

    Opens a reader per input (in the order of ``paths``), checks each against ``reference``
    (whose tensor names, in order, the output has), streams one tensor name at a time through
    ``tensor_of``, checks each result is finite, writes ``record`` as ``PLAN_FILE`` and
    renames the output into place. ``template`` names the input whose config files are copied.
    ``start(readers)`` runs once before the first tensor. Nothing is left at ``out_dir`` on
    error.
    """
    with ExitStack() as stack:
        readers = open_models(stack, paths, reference)
        first = readers[reference]
        if start is not None:
            start(readers)
        writer = stack.enter_context(
            ModelWriter(
                out_dir,
                paths[template],
                dtype=out_dtype,
                max_shard_bytes=max_shard_bytes,
                inputs=paths.values(),
            )
        )
        for name in tqdm(first.names(), desc=desc, disable=not progress):
            out = tensor_of(name, readers)
            check_finite(out, f"{out_dir}: {what} {name!r}", error=ValueError)
            writer.add(name, out)
            del out
        write_plan(writer.tmp, record)
        return Path(writer.finish())


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
        method: a name of the method registry (``rlpredict.methods``): ``two-point``,
            ``lstsq-free``, ``lstsq-anchored``, ``expo`` or ``relex``; ``lstsq`` takes its fit
            from ``fit`` (see the module docstring).
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
            of extrapolating them. Default: the method's (True for ``two-point`` and ``lstsq``,
            the RLVR-linearity paper's choice; False for ``expo`` and ``relex``).
        out_dtype: dtype of the written tensors (arithmetic is always fp32).
        max_shard_bytes: shard size of the output.

    The plan (``plan_extrapolation``: method, steps, coefficients, time axis, lr schedule,
    package version) is written next to the weights as ``PLAN_FILE``.

    Raises:
        ValueError: unknown method/fit/time, too few window checkpoints for the method, missing
            base, target step inside the window, α given together with a target step.
        CheckpointError: unreadable, truncated, mismatched or non-finite checkpoints.
        Nothing is left at ``out_dir`` when an error occurs.
    """
    checkpoints = {int(s): Path(p) for s, p in checkpoints.items()}
    plan = plan_extrapolation(
        method,
        list(checkpoints),
        target_step,
        base_given=base_dir is not None,
        alpha=alpha,
        fit=fit,
        time=time,
        lr_schedule=lr_schedule,
        copy_norms=copy_norms,
    )
    log.info(
        "extrapolate %s: window steps %s, target step %s, time=%s, fit=%s, terms %s",
        plan.method,
        list(plan.window),
        target_step,
        time,
        plan.fit,
        None if plan.terms is None else list(plan.terms),
    )
    paths: dict[Key, Path] = {s: checkpoints[s] for s in plan.window}
    if plan.uses_base:
        paths[BASE] = Path(base_dir) if base_dir is not None else checkpoints[0]
    operator = plan.spec.tensor_operator()

    def tensor_of(name: str, readers: dict[Key, ModelReader]) -> torch.Tensor:
        if plan.copy_norms and is_norm(name):
            return readers[plan.last].get(name)
        return operator.tensor(plan, lambda key: readers[key].get(name))

    return stream_model(
        paths,
        plan.reference,
        plan.last,
        out_dir,
        tensor_of,
        record=plan.record(),
        what="extrapolated tensor",
        desc=f"extrapolate {plan.method}",
        out_dtype=out_dtype,
        max_shard_bytes=max_shard_bytes,
        progress=progress,
    )
