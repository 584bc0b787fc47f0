"""AlphaRL (arXiv 2510.00553, METHODS.md §1b): predict the final update of each module from the
rank-1 trajectory of its early window.

Per module (a 2-D matrix selected by ``module_regex``) and window checkpoint t:

1. ΔW_t = W_t − W_0, top singular triplet (σ₁, u₁, v₁) by ``rlpredict.spectral.top_k_svd``.
2. û(t) = α(t) σ₁(t) u₁(t) with the Frobenius rescale α = ‖ΔW_t‖_F / σ₁, i.e. û = ‖ΔW_t‖_F u₁
   (``scale="frobenius"``, default), or σ₁ u₁ as the released code stores it (``scale="none"``).
3. Sign alignment: u₁ and v₁ flip together, so the sign is arbitrary. The last window
   checkpoint keeps its sign (its v₁ builds the prediction, so û and v₁ must stay paired);
   walking backwards, each earlier u₁(t) is flipped when its cosine with the next step's
   (already aligned) u₁ is negative.
4. Labels y(t) = dev accuracy of each window checkpoint. The û(t) are standardized per entry
   and reduced to one score z by a one-component PLS (sklearn ``PLSRegression``); a
   least-squares line y = a z + b is fitted; its R² is the module's linearity.
5. A target accuracy y* is inverted to z* = (y* − b) / a, mapped back through the PLS to û*,
   and the predicted update is ΔW* = û* v₁ᵀ with v₁ from the last window checkpoint.

Targets: ``oracle`` is the paper's y* = 1 on accuracy normalised by the final model; on raw
accuracies that is y* = final accuracy, which gives the same z* (the fit is linear in y). It
uses the final result and is NOT a forecast. ``forecast`` takes y* from a least-squares line of
dev accuracy vs step over the window, evaluated at the final step (window data only). A number
is used as y* directly.

Accuracies are fractions in [0, 1]: window labels, a given number and the oracle's final
accuracy outside that range are refused (ValueError). A forecast outside it (a line through
rising accuracies passes 1 soon enough) is impossible as an accuracy, so it is clamped to the
nearest bound with a logged warning; ``AlphaRLResult`` records both the y* used and the raw
forecast (``target_accuracy`` and ``target_accuracy_raw``).

The prediction is added to the base (``add_to="base"``, the paper's text, default) or to the
last window checkpoint (``add_to="last"``, the released code). Tensors outside the module set
(embeddings, lm_head, norms, biases, unselected matrices) keep the value of the model the
prediction is added to: the base, or the last window checkpoint.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cross_decomposition import PLSRegression
from tqdm.auto import tqdm

from rlpredict import __version__
from rlpredict.extrapolate import open_models, stream_model
from rlpredict.methods import BASE, METHODS
from rlpredict.spectral import DEFAULT_MODULE_REGEX, matched_names, top_k_svd

log = logging.getLogger(__name__)

TARGETS = ("oracle", "forecast")
ACCURACY_RANGE = (0.0, 1.0)
SCALES = ("frobenius", "none")
ADD_TO = ("base", "last")
FIT_COLUMNS = ["name", "layer", "module", "r2", "slope", "intercept", "z_target", "n_points"]


# ---------------------------------------------------------------------------------------------
# Pure parts (tensors and arrays)


def scaled_top_vector(
    delta: torch.Tensor, scale: str = "frobenius", **svd_kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """(û, v₁) of one update: û = ‖ΔW‖_F u₁ (frobenius) or σ₁ u₁ (none)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
    u, s, vh = top_k_svd(delta, 1, **svd_kwargs)
    # α σ₁ with α = ‖ΔW‖_F / ‖σ₁ u₁ v₁ᵀ‖_F = ‖ΔW‖_F / σ₁
    magnitude = torch.linalg.vector_norm(delta) if scale == "frobenius" else s[0]
    return u[:, 0] * magnitude, vh[0]


def align_signs(vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Flip vectors so that neighbours have non-negative cosine; the last one keeps its sign."""
    out = list(vectors)
    for i in range(len(out) - 2, -1, -1):
        if float(torch.dot(out[i], out[i + 1])) < 0:
            out[i] = -out[i]
    return out


def linear_forecast(steps: Sequence[float], values: Sequence[float], at: float) -> float:
    """Least-squares line of values vs steps evaluated at ``at``."""
    slope, intercept = np.polyfit(np.asarray(steps, float), np.asarray(values, float), 1)
    return float(slope * at + intercept)


@dataclass
class ModuleFit:
    """One module's PLS + line fit; ``predict(y)`` maps a target accuracy back to û*."""

    pls: PLSRegression | None  # None when û does not vary over the window
    slope: float
    intercept: float
    r2: float
    constant: np.ndarray | None = None

    def z_of(self, y: float) -> float:
        if self.pls is None:
            return float("nan")
        return (y - self.intercept) / self.slope

    def predict(self, y: float) -> np.ndarray:
        if self.pls is None:
            return self.constant
        z = np.array([[self.z_of(y)]])
        return self.pls.inverse_transform(z)[0]


class LabelsDoNotVary(ValueError):
    """Every window checkpoint has the same dev accuracy: the line y = a z + b is flat, so no
    target accuracy maps to a point on it (AlphaRL cannot run on this window)."""


def fit_module(u_hats: np.ndarray, labels: Sequence[float], name: str = "module") -> ModuleFit:
    """Standardize û(t) (rows), one-component PLS → score z, least squares y = a z + b."""
    x = np.asarray(u_hats, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.shape[0] != len(y) or x.shape[0] < 2:
        raise ValueError(f"{name}: PLS needs >= 2 labelled points, got {x.shape[0]}/{len(y)}")
    if np.ptp(y) == 0:
        raise LabelsDoNotVary(
            f"{name}: all accuracy labels are equal ({y[0]}); cannot fit or invert"
        )
    if np.all(np.ptp(x, axis=0) <= 1e-12 * (np.abs(x).max() + 1e-30)):
        # û(t) is the same at every step: nothing to extrapolate along
        return ModuleFit(None, 0.0, float(y.mean()), float("nan"), constant=x[-1])
    pls = PLSRegression(n_components=1, scale=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pls.fit(x, y)
    z = pls.transform(x)[:, 0]
    slope, intercept = np.polyfit(z, y, 1)
    resid = y - (slope * z + intercept)
    r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
    if not abs(slope) > 1e-12 * np.ptp(y) / max(np.ptp(z), 1e-30):
        raise ValueError(f"{name}: accuracy does not vary with the PLS score (slope 0)")
    return ModuleFit(pls, float(slope), float(intercept), r2)


def rank1_fit(
    deltas: Iterable[torch.Tensor],
    labels: Sequence[float],
    *,
    scale: str = "frobenius",
    name: str = "module",
    **svd_kwargs,
) -> tuple[ModuleFit, torch.Tensor]:
    """(fit, v₁ of the last delta) of one module from its window deltas (in step order).

    Steps 1–4 of the module docstring: û(t) of each delta (consumed one at a time), signs
    aligned, PLS score and line fitted against ``labels``. ``name`` appears in errors.
    """
    u_hats, v_last = [], None
    for delta in deltas:
        u_hat, v_last = scaled_top_vector(delta, scale, **svd_kwargs)
        u_hats.append(u_hat)
        del delta
    x = torch.stack(align_signs(u_hats)).double().cpu().numpy()  # PLS runs in numpy
    return fit_module(x, labels, name), v_last


def predicted_update(fit: ModuleFit, v_last: torch.Tensor, target_accuracy: float) -> torch.Tensor:
    """ΔW* = û* v₁ᵀ with û* the fit's inverse at ``target_accuracy`` (step 5), in fp32 on
    ``v_last``'s device."""
    u_star = torch.from_numpy(np.asarray(fit.predict(target_accuracy), np.float64)).float()
    return torch.outer(u_star.to(v_last.device), v_last.float())


def alpharl_update(
    deltas: Iterable[torch.Tensor],
    labels: Sequence[float],
    target_accuracy: float,
    *,
    scale: str = "frobenius",
    name: str = "module",
    **svd_kwargs,
) -> tuple[torch.Tensor, ModuleFit]:
    """Predicted update ΔW* = û* v₁ᵀ of one module from its window deltas (in step order),
    consumed one at a time; with the module's fit. The per-tensor operator of AlphaRL."""
    fit, v_last = rank1_fit(deltas, labels, scale=scale, name=name, **svd_kwargs)
    return predicted_update(fit, v_last, target_accuracy), fit


# ---------------------------------------------------------------------------------------------
# Model level


@dataclass
class AlphaRLResult:
    """The written model dir, the per-module fits and the target accuracy.

    ``target_accuracy`` is the y* used (in [0, 1]); ``target_accuracy_raw`` the y* before
    clamping, which differs only for a forecast outside [0, 1]. Both None when only fitting.
    """

    path: Path | None
    fits: pd.DataFrame
    target_accuracy: float | None
    target_accuracy_raw: float | None = None

    @property
    def target_clamped(self) -> bool:
        """Whether the forecast y* lay outside [0, 1] and was clamped."""
        return self.target_accuracy != self.target_accuracy_raw


def _check_accuracy(value: float, what: str) -> float:
    """``value`` as a float; ValueError unless it is a finite accuracy in [0, 1]."""
    low, high = ACCURACY_RANGE
    value = float(value)
    if not low <= value <= high:  # also false for NaN
        raise ValueError(f"{what} must be an accuracy in [{low:g}, {high:g}], got {value:g}")
    return value


def target_accuracies(
    target: str | float,
    window_accuracies: dict[int, float],
    final_step: int | None,
    final_accuracy: float | None = None,
) -> tuple[float, float]:
    """(y* used, y* raw) on the accuracy scale for ``oracle``, ``forecast`` or a given number.

    A given number and the oracle's ``final_accuracy`` must lie in [0, 1] (ValueError
    otherwise). A forecast outside [0, 1] is clamped to the nearest bound, with a warning;
    the raw forecast is returned beside it.
    """
    if not isinstance(target, str):
        y = _check_accuracy(target, "the target y*")
        return y, y
    if target == "oracle":
        if final_accuracy is None:
            raise ValueError("target='oracle' needs final_accuracy (the fully trained model's)")
        y = _check_accuracy(final_accuracy, "the final accuracy (oracle target)")
        return y, y
    if target == "forecast":
        if final_step is None:
            raise ValueError("target='forecast' needs the final step to forecast to")
        steps = sorted(window_accuracies)
        raw = linear_forecast(steps, [window_accuracies[s] for s in steps], final_step)
        low, high = ACCURACY_RANGE
        y = min(max(raw, low), high)
        if y != raw:
            log.warning(
                "AlphaRL forecast y* = %.4f (line through the window accuracies at step %d) "
                "lies outside [%g, %g], which no accuracy can: using y* = %g instead",
                raw,
                final_step,
                low,
                high,
                y,
            )
        return y, raw
    raise ValueError(f"unknown target {target!r}; choose one of {TARGETS} or a number")


def target_accuracy(
    target: str | float,
    window_accuracies: dict[int, float],
    final_step: int | None,
    final_accuracy: float | None = None,
) -> float:
    """The y* used (in [0, 1]): ``target_accuracies(...)[0]``."""
    return target_accuracies(target, window_accuracies, final_step, final_accuracy)[0]


def _window(checkpoints, accuracies, base_dir):
    steps = sorted(int(s) for s in checkpoints)
    base = Path(base_dir) if base_dir is not None else checkpoints.get(0)
    if base is None:
        raise ValueError(
            f"AlphaRL needs the base model: pass base_dir or include step 0 (got steps {steps})"
        )
    window = [s for s in steps if s > 0]
    if len(window) < 2:
        raise ValueError(
            f"AlphaRL needs at least 2 window checkpoints besides the base (3 or more "
            f"recommended), got {len(window)} (steps {window})"
        )
    if len(window) == 2:
        log.warning("AlphaRL with 2 window checkpoints: every fit has R² = 1; 3+ recommended")
    if not accuracies:
        raise ValueError("AlphaRL needs dev accuracy labels for the window; none were given")
    missing = [s for s in window if s not in accuracies]
    if missing:
        raise ValueError(
            f"accuracy labels missing for window checkpoint(s) {missing} "
            f"({', '.join(str(checkpoints[s]) for s in missing)})"
        )
    labels = {s: float(accuracies[s]) for s in window}
    for s, label in labels.items():
        _check_accuracy(label, f"the accuracy label of step {s} ({checkpoints[s]})")
    if len(set(labels.values())) == 1:
        raise LabelsDoNotVary(
            f"all window accuracy labels are equal ({labels}): the line y = a z + b has slope 0 "
            f"and cannot be inverted"
        )
    return window, base, labels


def _module_parts(name: str) -> tuple[int | None, str]:
    m = re.search(r"layers\.(\d+)\.(.+?)(\.weight)?$", name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def alpharl_extrapolate(
    checkpoints: dict[int, Path],
    accuracies: dict[int, float],
    out_dir: str | Path | None,
    *,
    final_step: int | None = None,
    target: str | float = "forecast",
    final_accuracy: float | None = None,
    base_dir: str | Path | None = None,
    scale: str = "frobenius",
    add_to: str = "base",
    module_regex: str = DEFAULT_MODULE_REGEX,
    out_dtype: torch.dtype = torch.float32,
    svd_method: str = "auto",
    seed: int = 0,
    max_shard_bytes: int = 2**30,
    progress: bool = True,
) -> AlphaRLResult:
    """Fit AlphaRL over the window and write the predicted model to ``out_dir``.

    Args:
        checkpoints: window checkpoints, step → HF model dir; step 0 (if present) is the base.
        accuracies: dev accuracy per window step (every window step needs one).
        out_dir: where to write the HF model dir; None only fits (returns R² etc., no model).
        final_step: the step T the prediction stands for (needed by ``target="forecast"``;
            must lie after the window).
        target: ``forecast`` (default), ``oracle`` (needs ``final_accuracy``; uses the final
            result, label it as oracle) or a number taken as y* on the accuracy scale. A
            forecast outside [0, 1] is clamped to it with a warning (see
            ``target_accuracies``); the result records the y* used and the raw one.
        base_dir: the base model (default: ``checkpoints[0]``).
        scale: ``frobenius`` (û = ‖ΔW‖_F u₁, default) or ``none`` (σ₁ u₁, as the code).
        add_to: ``base`` (default) or ``last`` window checkpoint; other tensors are copied from
            the same model.
        module_regex: which tensors get a predicted update (2-D matrices only).

    Returns:
        ``AlphaRLResult`` with the output path, a DataFrame with one row per module
        (columns ``FIT_COLUMNS``; ``r2`` is NaN for modules whose û does not change), the y*
        used and the y* before clamping.

    Raises:
        ValueError: too few window checkpoints, missing/degenerate labels or labels outside
            [0, 1], a given or oracle y* outside [0, 1], a final step inside the window, bad
            options. CheckpointError: bad or mismatched checkpoints. Nothing is
            left at ``out_dir`` on error.
    """
    if add_to not in ADD_TO:
        raise ValueError(f"unknown add_to {add_to!r}; choose one of {ADD_TO}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
    checkpoints = {int(s): Path(p) for s, p in checkpoints.items()}
    accuracies = {int(s): a for s, a in (accuracies or {}).items()}
    window, base, labels = _window(checkpoints, accuracies, base_dir)
    if final_step is not None and final_step <= window[-1]:
        raise ValueError(
            f"final step {final_step} is inside the window (its last checkpoint is step "
            f"{window[-1]})"
        )
    y_star = y_raw = None
    if out_dir is not None:
        y_star, y_raw = target_accuracies(target, labels, final_step, final_accuracy)
        log.info("AlphaRL target %s: y* = %.4f (window labels %s)", target, y_star, labels)
    y = [labels[s] for s in window]
    svd_kwargs = {"method": svd_method, "seed": seed}
    paths = {BASE: base, **{s: checkpoints[s] for s in window}}
    modules: set[str] = set()
    rows = []

    def window_deltas(readers, name, w0):
        return (readers[s].get(name).sub_(w0) for s in window)

    def add_row(name: str, fit: ModuleFit) -> None:
        layer, module = _module_parts(name)
        z_star = fit.z_of(y_star) if y_star is not None else float("nan")
        rows.append([name, layer, module, fit.r2, fit.slope, fit.intercept, z_star, len(y)])

    def find_modules(readers) -> None:
        modules.update(matched_names(readers[BASE], module_regex))

    def tensor_of(name: str, readers) -> torch.Tensor:
        source = readers[BASE] if add_to == "base" else readers[window[-1]]
        if name not in modules:
            return source.get(name)
        w0 = readers[BASE].get(name)
        update, fit = alpharl_update(
            window_deltas(readers, name, w0), y, y_star, scale=scale, name=name, **svd_kwargs
        )
        add_row(name, fit)
        out = w0 if add_to == "base" else source.get(name)
        return out.add_(update)

    if out_dir is None:  # fits only
        with ExitStack() as stack:
            readers = open_models(stack, paths, BASE)
            find_modules(readers)
            for name in tqdm(readers[BASE].names(), desc="AlphaRL", disable=not progress):
                if name in modules:
                    w0 = readers[BASE].get(name)
                    fit, _ = rank1_fit(
                        window_deltas(readers, name, w0), y, scale=scale, name=name, **svd_kwargs
                    )
                    add_row(name, fit)
        return AlphaRLResult(None, pd.DataFrame(rows, columns=FIT_COLUMNS), None, None)
    record = {
        "method": METHODS["alpharl"].name,
        "steps": [0, *window],
        "window": window,
        "target": target,
        "final_step": final_step,
        "target_accuracy": y_star,
        "target_accuracy_raw": y_raw,
        "labels": [[s, labels[s]] for s in window],
        "scale": scale,
        "add_to": add_to,
        "modules": module_regex,
        "svd": svd_kwargs,
        "rlpredict_version": __version__,
    }
    path = stream_model(
        paths,
        BASE,
        window[-1],
        out_dir,
        tensor_of,
        record=record,
        what="AlphaRL prediction for",
        desc="AlphaRL",
        out_dtype=out_dtype,
        max_shard_bytes=max_shard_bytes,
        progress=progress,
        start=find_modules,
    )
    return AlphaRLResult(path, pd.DataFrame(rows, columns=FIT_COLUMNS), y_star, y_raw)


def alpharl_fits(
    checkpoints: dict[int, Path],
    accuracies: dict[int, float],
    *,
    base_dir: str | Path | None = None,
    scale: str = "frobenius",
    module_regex: str = DEFAULT_MODULE_REGEX,
    svd_method: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-module PLS linearity (R², slope, intercept) over the window, without writing a model
    (the layer × module R² heatmap)."""
    return alpharl_extrapolate(
        checkpoints,
        accuracies,
        None,
        base_dir=base_dir,
        scale=scale,
        module_regex=module_regex,
        svd_method=svd_method,
        seed=seed,
        progress=progress,
    ).fits
