"""The two papers' headline claims, checked against one run's tables: one row per claim with
the paper's number, this run's number with its standard error, a verdict and the rule that
decided it. Pure pandas/numpy (no torch), so the workflow and the command line share it.

Verdicts (``VERDICTS``), for a claim "the value satisfies a condition" and the interval
value ± 2 s.e.:

- ``holds``: the condition holds over the whole interval;
- ``fails``: the condition is violated over the whole interval (by more than 2 s.e.);
- ``partly``: the interval straddles the condition's boundary;
- ``not run``: the analysis is switched off by config, its input is absent, or the value is
  undefined (e.g. a ratio to a zero accuracy).

Standard errors: accuracies' from lm-eval (``stderr`` of the tables, ``accuracy_stderr`` of
``eval/*.json``); ratios and differences of accuracies by the delta method, treating the two
accuracies as independent (conservative when they are positively correlated, as evaluations
of related models on the same problems are); medians of R² by a seeded bootstrap over the
series; fractions binomially; means of R² as sd/√n.

Command line: ``python -m rlpredict.claims RUN_DIR [RUN_DIR ...]`` prints the runs'
``tables/claims.csv`` side by side as a Markdown table (the README's claims tables).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

VERDICTS = ("holds", "partly", "fails", "not run")
COLUMNS = [
    "id",
    "claim",
    "paper",
    "paper_value",
    "this_run",
    "value",
    "stderr",
    "verdict",
    "rule",
    "source_file",
]
Z = 2.0  # half-width of the interval a verdict looks at, in standard errors
BOOTSTRAP_SAMPLES = 200

# Inputs of the claims: name → (path inside the run dir, the config switch that makes it).
# ``{final}`` is the final RL step. The workflow's input function and the command line both
# build their file lists from this one table.
INPUTS = {
    "accuracy": ("tables/accuracy_vs_step.csv", None),
    "rank_ablation": ("tables/rank_ablation.csv", "ablate"),
    "sft_final": ("eval/sft/step_{final}.json", "sft"),
    "speedup": ("tables/speedup_vs_accuracy.csv", "extrapolate"),
    "weights": ("analysis/linearity/weights.parquet", "linearity"),
    "logprobs": ("analysis/linearity/logprobs.parquet", "linearity"),
    "rank1": ("analysis/linearity/rank1_r2.parquet", "linearity"),
    "regrounding": ("tables/regrounding.csv", "regrounding"),
}
SWITCHED_OFF = {
    "ablate": "rank-k ablation is off (ablate.enabled: false)",
    "sft": "the SFT control is off (control.sft.enabled: false, or ablate.enabled: false)",
    "extrapolate": "extrapolation is off (extrapolate.enabled: false, or no window runs)",
    "linearity": "the linearity analyses are off (linearity.enabled: false)",
    "regrounding": "periodic re-grounding is off (regrounding.enabled: false)",
}


class ClaimsError(ValueError):
    """An input table that exists but cannot be read as the workflow writes it."""


@dataclass(frozen=True)
class Outcome:
    """What one claim's check found."""

    this_run: str
    value: float
    stderr: float
    verdict: str
    rule: str
    source_file: str


@dataclass(frozen=True)
class Claim:
    """One claim of the papers and the function that checks it against a run's files."""

    id: str
    claim: str
    paper: str
    paper_value: str
    check: Callable[[Mapping[str, Path | None]], Outcome]


# --------------------------------------------------------------------------------------
# Uncertainty


def ratio_se(a: float, se_a: float, b: float, se_b: float) -> float:
    """Delta-method standard error of a / b for independent a and b:
    √((se_a / b)² + (a · se_b / b²)²). NaN when b is 0."""
    if b == 0:
        return math.nan
    return math.sqrt((se_a / b) ** 2 + (a * se_b / b**2) ** 2)


def gain_se(
    acc: float, se_acc: float, base: float, se_base: float, final: float, se_final: float
) -> float:
    """Delta-method standard error of the gain recovered g = (acc − base) / (final − base),
    the three accuracies independent: ∂g/∂acc = 1/D, ∂g/∂base = (acc − final)/D²,
    ∂g/∂final = −(acc − base)/D² with D = final − base. NaN when D is 0."""
    gap = final - base
    if gap == 0:
        return math.nan
    return math.sqrt(
        (se_acc / gap) ** 2
        + (se_base * (acc - final) / gap**2) ** 2
        + (se_final * (acc - base) / gap**2) ** 2
    )


def difference_se(se_a: float, se_b: float) -> float:
    """Standard error of a − b for independent a and b: √(se_a² + se_b²)."""
    return math.sqrt(se_a**2 + se_b**2)


def bootstrap_median_se(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0):
    """Standard deviation of the median over ``samples`` seeded resamples (with replacement)
    of ``values``; NaN for fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    medians = [np.median(rng.choice(values, values.size)) for _ in range(samples)]
    return float(np.std(medians, ddof=1))


def fraction_se(p: float, n: int) -> float:
    """Binomial standard error √(p(1 − p)/n) of a fraction of n series."""
    return math.sqrt(p * (1 - p) / n) if n else math.nan


# --------------------------------------------------------------------------------------
# Verdict rules: the condition on the value, checked over value ± Z·s.e.


def _se(stderr: float) -> float:
    return 0.0 if stderr is None or math.isnan(stderr) else float(stderr)


def at_least(value: float, stderr: float, threshold: float) -> str:
    """value ≥ threshold. holds: value − 2 s.e. ≥ threshold; fails: value + 2 s.e. <
    threshold; partly: otherwise. An unknown s.e. counts as 0."""
    se = _se(stderr)
    if value - Z * se >= threshold:
        return "holds"
    return "fails" if value + Z * se < threshold else "partly"


def above(value: float, stderr: float, threshold: float) -> str:
    """value > threshold. holds: value − 2 s.e. > threshold; fails: value + 2 s.e. ≤
    threshold; partly: otherwise."""
    se = _se(stderr)
    if value - Z * se > threshold:
        return "holds"
    return "fails" if value + Z * se <= threshold else "partly"


def below(value: float, stderr: float, threshold: float) -> str:
    """value < threshold. holds: value + 2 s.e. < threshold; fails: value − 2 s.e. ≥
    threshold; partly: otherwise."""
    se = _se(stderr)
    if value + Z * se < threshold:
        return "holds"
    return "fails" if value - Z * se >= threshold else "partly"


def within(value: float, stderr: float, low: float, high: float) -> str:
    """low ≤ value ≤ high. holds: the interval value ± 2 s.e. lies inside [low, high];
    fails: it lies wholly outside (below low or above high); partly: it overlaps the range
    and reaches past one of its ends."""
    se = _se(stderr)
    lo, hi = value - Z * se, value + Z * se
    if low <= lo and hi <= high:
        return "holds"
    return "fails" if hi < low or lo > high else "partly"


def combine(*verdicts: str) -> str:
    """Several conditions together: holds if all hold, fails if all fail, else partly."""
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "fails" if all(v == "fails" for v in verdicts) else "partly"


def decide(verdict: Callable[..., str], value: float, stderr: float, *args: float) -> str:
    """The verdict, or ``not run`` when the value is undefined (NaN)."""
    return "not run" if value is None or math.isnan(value) else verdict(value, stderr, *args)


SE_NOTE = "s.e. by the delta method, treating the accuracies as independent"


# --------------------------------------------------------------------------------------
# Reading the run's files


def run_files(
    run_dir: str | Path, enabled: Mapping[str, bool], final_step: int
) -> dict[str, Path | None]:
    """Every input of the claims under ``run_dir``: its path, or None when the config switch
    that makes it (``INPUTS``; a missing key counts as off) is off."""
    files: dict[str, Path | None] = {}
    for name, (rel, switch) in INPUTS.items():
        on = switch is None or bool(enabled.get(switch, False))
        files[name] = Path(run_dir) / rel.format(final=final_step) if on else None
    return files


def _unavailable(files: Mapping[str, Path | None], name: str) -> str | None:
    """Why input ``name`` cannot be used (switched off, absent), or None when it can."""
    path = files.get(name)
    if path is None:
        return SWITCHED_OFF.get(INPUTS[name][1], f"no {name} input given")
    if not Path(path).exists():
        return f"input absent: {path}"
    return None


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV or Parquet table with at least ``columns``; ClaimsError naming the file else."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, dtype={"rank": str})
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ClaimsError(f"{path}: unreadable table ({err})") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ClaimsError(f"{path}: no column {', '.join(missing)}")
    return table


def read_eval(path: Path) -> tuple[float, float]:
    """(accuracy, accuracy_stderr) of an evaluation JSON; ClaimsError naming the file else."""
    try:
        result = json.loads(Path(path).read_text())
        return float(result["accuracy"]), float(result["accuracy_stderr"])
    except (OSError, ValueError, TypeError) as err:
        raise ClaimsError(f"{path}: unreadable evaluation result ({err})") from err
    except KeyError as err:
        raise ClaimsError(f"{path}: evaluation result has no {err}") from err


def final_row(files: Mapping[str, Path | None]) -> tuple[float, float, float, float]:
    """(final accuracy, its s.e., base accuracy, its s.e.) of the RL run, from the accuracy
    table (step 0 is the base, the last row the final checkpoint)."""
    table = read_table(files["accuracy"], ["step", "accuracy", "stderr"]).sort_values("step")
    if table.empty:
        raise ClaimsError(f"{files['accuracy']}: no rows")
    first, last = table.iloc[0], table.iloc[-1]
    return (
        float(last["accuracy"]),
        float(last["stderr"]),
        float(first["accuracy"]),
        float(first["stderr"]),
    )


def not_run(reason: str, rule: str = "", source: str = "") -> Outcome:
    """The outcome of a claim that cannot be decided, its reason first in the rule."""
    return Outcome("not run", math.nan, math.nan, "not run", f"not run: {reason}. {rule}", source)


def fmt(value: float, stderr: float, percent: bool = False) -> str:
    """``0.942 ± 0.031`` (or ``94.2 % ± 3.1 %``); ``–`` for an undefined value."""
    if value is None or math.isnan(value):
        return "–"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    text = f"{value * scale:.3g}{unit}" if percent else f"{value:.3f}"
    if stderr is None or math.isnan(stderr):
        return text
    return f"{text} ± {stderr * scale:.2g}{unit}" if percent else f"{text} ± {stderr:.3f}"


def _display(files: Mapping[str, Path | None], *names: str) -> str:
    return "; ".join(str(files[n]) for n in names if files.get(n) is not None)


# --------------------------------------------------------------------------------------
# The claims


def _rank1(files: Mapping[str, Path | None], source: str) -> tuple[pd.Series | None, str]:
    table = read_table(
        files["rank_ablation"], ["source", "rank", "accuracy", "stderr", "base_accuracy"]
    )
    rows = table[(table["source"] == source) & (table["rank"].astype(str) == "1")]
    if rows.empty:
        have = sorted(set(table.loc[table["source"] == source, "rank"].astype(str)))
        why = (
            f"no {source} rows in the rank-ablation table"
            if not have
            else f"rank 1 is not among ablate.ranks (ran: {', '.join(have)})"
        )
        return None, why
    return rows.iloc[0], ""


C1_RULE = (
    "holds: relative accuracy acc(rank-1 ablated) / acc(trained) minus 2 s.e. is ≥ 0.99; "
    "fails: plus 2 s.e. it is < 0.99; partly: otherwise"
)


def check_rank1_rl(files: Mapping[str, Path | None]) -> Outcome:
    """C1: rank-1 ablation of the RL update keeps ≥ 99 % of the trained accuracy."""
    rule = f"{C1_RULE} ({SE_NOTE})."
    why = _unavailable(files, "rank_ablation") or _unavailable(files, "accuracy")
    if why:
        return not_run(why, rule)
    final, se_final, base, se_base = final_row(files)
    row, why = _rank1(files, "rl")
    source = _display(files, "rank_ablation", "accuracy")
    if row is None:
        return not_run(why, rule, source)
    acc, se_acc = float(row["accuracy"]), float(row["stderr"])
    value = acc / final if final else math.nan
    stderr = ratio_se(acc, se_acc, final, se_final)
    gain = (acc - base) / (final - base) if final != base else math.nan
    this_run = (
        f"{fmt(value, stderr, percent=True)} "
        f"(gain recovered {fmt(gain, gain_se(acc, se_acc, base, se_base, final, se_final))}; "
        f"accuracy {acc:.3f} vs trained {final:.3f}, base {base:.3f})"
    )
    verdict = decide(at_least, value, stderr, 0.99)
    if verdict == "not run":
        return not_run("relative accuracy undefined: the trained model's accuracy is 0", rule)
    return Outcome(this_run, value, stderr, verdict, rule, source)


def check_rank1_sft(files: Mapping[str, Path | None]) -> Outcome:
    """C2: the same ablation does not keep the accuracy of the SFT control."""
    rule = (
        "the C1 condition must fail for SFT. holds: relative accuracy plus 2 s.e. is < 0.99; "
        f"fails: minus 2 s.e. it is ≥ 0.99; partly: otherwise ({SE_NOTE})."
    )
    why = (
        _unavailable(files, "rank_ablation")
        or _unavailable(files, "sft_final")
        or _unavailable(files, "accuracy")
    )
    if why:
        return not_run(why, rule)
    row, why = _rank1(files, "sft")
    source = _display(files, "rank_ablation", "sft_final", "accuracy")
    if row is None:
        return not_run(why, rule, source)
    final, se_final = read_eval(files["sft_final"])
    _, _, base, se_base = final_row(files)
    acc, se_acc = float(row["accuracy"]), float(row["stderr"])
    value = acc / final if final else math.nan
    stderr = ratio_se(acc, se_acc, final, se_final)
    gain = (acc - base) / (final - base) if final != base else math.nan
    gain_err = gain_se(acc, se_acc, base, se_base, final, se_final)
    this_run = (
        f"{fmt(value, stderr, percent=True)} (gain recovered {fmt(gain, gain_err)}; "
        f"accuracy {acc:.3f} vs SFT-trained {final:.3f}, base {base:.3f})"
    )
    verdict = decide(below, value, stderr, 0.99)
    if verdict == "not run":
        return not_run("relative accuracy undefined: the SFT model's accuracy is 0", rule)
    return Outcome(this_run, value, stderr, verdict, rule, source)


def _r2(files: Mapping[str, Path | None], name: str) -> np.ndarray:
    r2 = read_table(files[name], ["r2"])["r2"].to_numpy(dtype=np.float64)
    return r2[~np.isnan(r2)]


def check_rank1_pls(files: Mapping[str, Path | None]) -> Outcome:
    """C3: AlphaRL's rank-1 PLS fit of dev accuracy has R² ≈ 0.91 on average over modules."""
    rule = (
        "condition: mean over modules of the rank-1 PLS R² ≥ 0.9 (the paper's 0.914 to one "
        "decimal). holds: mean − 2 s.e. ≥ 0.9; fails: mean + 2 s.e. < 0.9; partly: otherwise "
        "(s.e. = sd/√n over modules)."
    )
    why = _unavailable(files, "rank1")
    if why:
        return not_run(why, rule)
    r2 = _r2(files, "rank1")
    if r2.size == 0:
        return not_run("no module has a defined R²", rule, str(files["rank1"]))
    value = float(r2.mean())
    stderr = float(r2.std(ddof=1) / math.sqrt(r2.size)) if r2.size > 1 else math.nan
    this_run = f"mean {fmt(value, stderr)} (median {np.median(r2):.3f}; n = {r2.size} modules)"
    return Outcome(this_run, value, stderr, at_least(value, stderr, 0.9), rule, str(files["rank1"]))


def check_weight_linearity(files: Mapping[str, Path | None]) -> Outcome:
    """C4: median per-weight R² in 0.75–0.87, and more than 70 % of weights above 0.7."""
    rule = (
        "two conditions: (a) median R² in [0.75, 0.87] — holds: median ± 2 s.e. inside the "
        "range; fails: wholly outside it; partly: overlapping an end; (b) fraction of weights "
        "with R² > 0.7 above 0.70 — holds: fraction − 2 s.e. > 0.70; fails: fraction + 2 s.e. "
        "≤ 0.70; partly: otherwise. Claim holds if both hold, fails if both fail, partly "
        f"otherwise (median s.e.: bootstrap over weights, {BOOTSTRAP_SAMPLES} resamples; "
        "fraction s.e.: binomial)."
    )
    why = _unavailable(files, "weights")
    if why:
        return not_run(why, rule)
    r2 = _r2(files, "weights")
    if r2.size == 0:
        return not_run("no weight series kept", rule, str(files["weights"]))
    value, stderr = float(np.median(r2)), bootstrap_median_se(r2)
    frac = float(np.mean(r2 > 0.7))
    frac_se = fraction_se(frac, r2.size)
    verdict = combine(within(value, stderr, 0.75, 0.87), above(frac, frac_se, 0.70))
    this_run = (
        f"median {fmt(value, stderr)}; {fmt(frac, frac_se, percent=True)} of weights > 0.7 "
        f"(n = {r2.size} weights)"
    )
    return Outcome(this_run, value, stderr, verdict, rule, str(files["weights"]))


def check_logprob_linearity(files: Mapping[str, Path | None]) -> Outcome:
    """C5: token log-probs of the base's probe responses move linearly with the step."""
    rule = (
        "the paper gives no number, so this uses its weight threshold: median R² ≥ 0.7. "
        "holds: median − 2 s.e. ≥ 0.7; fails: median + 2 s.e. < 0.7; partly: otherwise "
        f"(s.e.: bootstrap over tokens, {BOOTSTRAP_SAMPLES} resamples)."
    )
    why = _unavailable(files, "logprobs")
    if why:
        return not_run(why, rule)
    r2 = _r2(files, "logprobs")
    if r2.size == 0:
        return not_run("no token kept", rule, str(files["logprobs"]))
    value, stderr = float(np.median(r2)), bootstrap_median_se(r2)
    frac = float(np.mean(r2 > 0.7))
    this_run = (
        f"median {fmt(value, stderr)}; {fmt(frac, fraction_se(frac, r2.size), percent=True)} "
        f"of tokens > 0.7 (n = {r2.size} tokens)"
    )
    return Outcome(
        this_run, value, stderr, at_least(value, stderr, 0.7), rule, str(files["logprobs"])
    )


def _speedup(files: Mapping[str, Path | None]) -> pd.DataFrame:
    table = read_table(
        files["speedup"], ["method", "window", "accuracy", "stderr", "uses_final_result"]
    )
    ran = table.dropna(subset=["accuracy"]).copy()
    ran["window"] = ran["window"].astype(float)
    return ran


def _nearest_window(windows, target: float) -> float:
    """The configured window nearest ``target`` (the smaller of two equally near)."""
    return min(sorted(set(windows)), key=lambda w: abs(w - target))


C6_WINDOW = 0.4


def _why_not_ran(files: Mapping[str, Path | None], window: float) -> str:
    """Why AlphaRL's forecast has no accuracy at ``window``: the speedup table's note."""
    table = read_table(files["speedup"], ["method", "window"])
    row = table[(table["method"] == "alpharl-forecast") & (table["window"].astype(float) == window)]
    if row.empty:
        return "not configured (extrapolate.methods, extrapolate.alpharl.targets)"
    note = row.iloc[0].get("note")
    return f"not run at this window ({note})" if isinstance(note, str) and note else "not run"


def check_early_window(files: Mapping[str, Path | None]) -> Outcome:
    """C6: from a 40 % window, AlphaRL's prediction keeps ≥ 96 % of the final accuracy."""
    rule = (
        "decided on AlphaRL with the forecast target (the paper's method without its use of "
        "the final result; the best other forecast when AlphaRL is not configured), at the "
        f"largest window ≤ {C6_WINDOW}: relative accuracy acc(prediction) / acc(final). "
        "holds: minus 2 s.e. ≥ 0.96; fails: plus 2 s.e. < 0.96; partly: otherwise "
        f"({SE_NOTE}). The oracle target uses the final result and is shown, never decides."
    )
    why = _unavailable(files, "speedup") or _unavailable(files, "accuracy")
    if why:
        return not_run(why, rule)
    source = _display(files, "speedup", "accuracy")
    final, se_final, _, _ = final_row(files)
    if final == 0:
        return not_run("relative accuracy undefined: the final accuracy is 0", rule, source)
    ran = _speedup(files)
    early = ran[ran["window"] <= C6_WINDOW + 1e-9]
    if early.empty:
        return not_run(f"no window ≤ {C6_WINDOW} ran", rule, source)
    window = float(early["window"].max())
    rows = early[early["window"] == window].copy()
    rows["rel"] = rows["accuracy"] / final
    rows["rel_se"] = [
        ratio_se(a, s, final, se_final) for a, s in zip(rows.accuracy, rows.stderr, strict=True)
    ]

    def shown(row) -> str:
        return fmt(row["rel"], row["rel_se"], percent=True)

    forecasts = rows[~rows["uses_final_result"].astype(bool)]
    if forecasts.empty:
        return not_run(f"no forecast method ran at window {window:g}", rule, source)
    best = forecasts.loc[forecasts["rel"].idxmax()]
    parts = [f"window {window:g}"]
    alpharl = forecasts[forecasts["method"] == "alpharl-forecast"]
    decider = alpharl.iloc[0] if not alpharl.empty else best
    if not alpharl.empty:
        parts.append(f"AlphaRL (paper's method, forecast target) {shown(decider)}")
    else:
        parts.append(
            f"AlphaRL (paper's method): {_why_not_ran(files, window)}, so the best forecast decides"
        )
    parts.append(f"best forecast: {best['method']} {shown(best)}")
    oracle = rows[rows["uses_final_result"].astype(bool)]  # AlphaRL's oracle target
    if not oracle.empty:
        parts.append(f"AlphaRL oracle target (uses the final result) {shown(oracle.iloc[0])}")
    value, stderr = float(decider["rel"]), float(decider["rel_se"])
    return Outcome("; ".join(parts), value, stderr, at_least(value, stderr, 0.96), rule, source)


CONTINUED_WINDOW = 0.7  # the RLVR-linearity paper extrapolates from t1 = 1400 to t' = 2000


def _vs_continued(
    files: Mapping[str, Path | None], methods: Sequence[str], label: str, rule: str, check
) -> Outcome:
    """acc(method at the window nearest 0.7) − acc(continued RL = final checkpoint)."""
    why = _unavailable(files, "speedup") or _unavailable(files, "accuracy")
    if why:
        return not_run(why, rule)
    source = _display(files, "speedup", "accuracy")
    final, se_final, _, _ = final_row(files)
    ran = _speedup(files)
    method = next((m for m in methods if m in set(ran["method"])), None)
    if method is None:
        return not_run(f"{label} did not run (not configured in extrapolate.methods)", rule, source)
    rows = ran[ran["method"] == method]
    window = _nearest_window(rows["window"], CONTINUED_WINDOW)
    row = rows[rows["window"] == window].iloc[0]
    value = float(row["accuracy"]) - final
    stderr = difference_se(float(row["stderr"]), se_final)
    this_run = (
        f"{value:+.3f} ± {stderr:.3f} ({method}, window {window:g}: {row['accuracy']:.3f} vs "
        f"continued RL {final:.3f})"
    )
    return Outcome(this_run, value, stderr, check(value, stderr), rule, source)


def check_weight_extrapolation(files: Mapping[str, Path | None]) -> Outcome:
    """C7: weight extrapolation reaches about the accuracy of continued RL."""
    rule = (
        "d = acc(weight extrapolation) − acc(continued RL to the final step), two-point "
        "(the paper's code; else least squares) at the window nearest 0.7 (the paper's "
        "t1/t' = 1400/2000). Condition d ≥ −0.02 (within 2 accuracy points, or better). "
        "holds: d − 2 s.e. ≥ −0.02; fails: d + 2 s.e. < −0.02; partly: otherwise "
        "(s.e. = √(s.e.₁² + s.e.₂²), the accuracies independent)."
    )
    return _vs_continued(
        files,
        ["two-point", "lstsq-free", "lstsq-anchored"],
        "weight extrapolation",
        rule,
        lambda v, s: at_least(v, s, -0.02),
    )


def check_logits_extrapolation(files: Mapping[str, Path | None]) -> Outcome:
    """C8: logits extrapolation beats continued RL."""
    rule = (
        "d = acc(logits extrapolation) − acc(continued RL to the final step), at the window "
        "nearest 0.7 (the paper's t1/t' = 1400/2000). Condition d > 0. holds: d − 2 s.e. > 0; "
        "fails: d + 2 s.e. ≤ 0; partly: otherwise (s.e. = √(s.e.₁² + s.e.₂²), the accuracies "
        "independent)."
    )
    return _vs_continued(
        files, ["logits"], "logits extrapolation", rule, lambda v, s: above(v, s, 0.0)
    )


def check_regrounding(files: Mapping[str, Path | None]) -> Outcome:
    """C9: a re-grounding chain reaches standard RL's accuracy in fewer real RL steps."""
    rule = (
        "s = standard RL's real steps / the chain's real steps to the highest target accuracy "
        "standard RL reaches (tables/regrounding.csv, steps_to_target rows; a chain's "
        "segment ends and extrapolated models both count, as the authors' runs validate the "
        "model each segment starts from and ends with; the best (M, N)); s = 0 when no chain "
        "reaches it. Condition "
        "s > 1. holds: s > 1; fails: s ≤ 1 (no s.e.: the first step at or above a target "
        "is one noisy crossing, and the best of several series favours s > 1 under "
        "evaluation noise; see the equal-budget rows for accuracies ± s.e.)."
    )
    why = _unavailable(files, "regrounding")
    if why:
        return not_run(why, rule)
    path = files["regrounding"]
    table = read_table(path, ["table", "series", "chain", "target", "real_steps", "speedup"])
    targets = table[table["table"] == "steps_to_target"]
    reached = targets[(targets["chain"] == "standard") & targets["real_steps"].notna()]
    if reached.empty:
        return not_run("standard RL reaches none of the target accuracies", rule, str(path))
    target = reached["target"].max()
    standard = table[(table["table"] == "curve") & (table["chain"] == "standard")]
    if not standard.empty and target <= standard.sort_values("real_step")["accuracy"].iloc[0]:
        return not_run("standard RL does not improve on the base accuracy", rule, str(path))
    rows = targets[(targets["target"] == target) & (targets["chain"] != "standard")]
    if rows.empty:
        return not_run("no re-grounding chain in the table", rule, str(path))
    best = rows.sort_values(["speedup", "cost_aware_speedup"], ascending=False, na_position="last")
    best = best.iloc[0]
    speedup = 0.0 if math.isnan(best["speedup"]) else float(best["speedup"])
    cost = best.get("cost_aware_speedup", math.nan)
    with_eval = best.get("cost_aware_speedup_with_eval", math.nan)
    this_run = (
        f"{speedup:.2g}× fewer real RL steps to accuracy ≥ {target:.3f} with "
        f"{best['series']} (cost-aware {cost:.2g}×, {with_eval:.2g}× with evaluations)"
        if speedup
        else f"no chain reaches accuracy {target:.3f} within its budget"
    )
    return Outcome(this_run, speedup, math.nan, above(speedup, 0.0, 1.0), rule, str(path))


CLAIMS = (
    Claim(
        "C1",
        "rank-1 ablation of the RL update keeps ≥ 99 % of the accuracy",
        "AlphaRL §Rank-1 Dominance (relative accuracy, average over RL algorithms)",
        "99.17 %",
        check_rank1_rl,
    ),
    Claim(
        "C2",
        "... and not for SFT",
        "AlphaRL §Rank-1 Dominance (MATH-500, rank-1 relative accuracy)",
        "SFT 2.5 % (DPO 62 %, distillation 1.5 %)",
        check_rank1_sft,
    ),
    Claim(
        "C3",
        "the rank-1 PLS fit of dev accuracy is linear (R²)",
        "AlphaRL §Rank-1 Linear Dynamics, Fig. 15",
        "0.914 average (≈ 0.96 example)",
        check_rank1_pls,
    ),
    Claim(
        "C4",
        "weights move linearly with the step (per-weight R²)",
        "RLVR linearity §3 (weight linearity)",
        "median 0.75–0.87 (RL; SFT 0.43), > 70 % of weights above 0.7",
        check_weight_linearity,
    ),
    Claim(
        "C5",
        "token log-probs move linearly with the step (per-token R²)",
        "RLVR linearity §3 (log-prob linearity, Fig. 2)",
        "no number: R² vs step of response tokens whose log-prob moves by > 0.2 "
        "(shown high, Fig. 2)",
        check_logprob_linearity,
    ),
    Claim(
        "C6",
        "from a 40 % window, a prediction keeps ≥ 96 % of the final accuracy",
        "AlphaRL Table 1 (Qwen3-8B-Base, 40 % of steps + AlphaRL)",
        "95.5–99.9 % (DAPO 99.9, GRPO 95.9, RLOO 95.5)",
        check_early_window,
    ),
    Claim(
        "C7",
        "weight extrapolation ≈ continued RL",
        "RLVR linearity §4 (weight extrapolation, AIME24 avg@64)",
        "peak 41.5 at t' = 1800 from t1 = 1400 (≈ continued RL)",
        check_weight_extrapolation,
    ),
    Claim(
        "C8",
        "logits extrapolation beats continued RL",
        "RLVR linearity §4 (logits extrapolation)",
        "+4.2 % (average over AIME24/25, MATH-500, LiveCodeBench)",
        check_logits_extrapolation,
    ),
    Claim(
        "C9",
        "periodic re-grounding (RL-Extra) needs fewer RL steps",
        "RLVR linearity §5 (RL-Extra)",
        "6.1× fewer RL steps to AIME24 ≥ 0.38, (M, N) = (20, 100)",
        check_regrounding,
    ),
)


def claims_table(files: Mapping[str, Path | None]) -> pd.DataFrame:
    """One row per claim (``COLUMNS``), from a run's files as ``run_files`` names them
    (None: switched off by config). A claim whose inputs are switched off or absent is
    ``not run``; ClaimsError names any input file that exists but cannot be read."""
    rows = []
    for claim in CLAIMS:
        outcome = claim.check(files)
        rows.append(
            {
                "id": claim.id,
                "claim": claim.claim,
                "paper": claim.paper,
                "paper_value": claim.paper_value,
                "this_run": outcome.this_run,
                "value": outcome.value,
                "stderr": outcome.stderr,
                "verdict": outcome.verdict,
                "rule": outcome.rule,
                "source_file": outcome.source_file,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------------------
# Side by side, for the README


def claims_csv(path: str | Path) -> Path:
    """``tables/claims.csv`` of a run dir, or the path itself when it names a file."""
    path = Path(path)
    return path if path.suffix == ".csv" else path / "tables" / "claims.csv"


def run_label(path: str | Path) -> str:
    """The run's name: the directory above ``tables/`` (``results/default`` → ``default``)."""
    csv = claims_csv(path).resolve()
    return csv.parent.parent.name if csv.parent.name == "tables" else csv.stem


def side_by_side(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per claim (in the order of the first table), the paper's columns, then one
    column per run holding ``verdict: this_run``; ``–`` where a run lacks the claim."""
    first = next(iter(tables.values()))
    out = first[["id", "claim", "paper_value"]].rename(columns={"paper_value": "papers"})
    for label, table in tables.items():
        cells = {
            row["id"]: f"{row['verdict']}: {row['this_run']}"
            if row["verdict"] != "not run"
            else "not run"
            for _, row in table.iterrows()
        }
        out[label] = [cells.get(i, "–") for i in out["id"]]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlpredict.claims RUN [RUN ...]``: print the runs' claims side by side as a
    Markdown table. Exit 0, or 1 with one line naming a missing or malformed claims file."""
    parser = argparse.ArgumentParser(
        prog="python -m rlpredict.claims",
        description="Print runs' tables/claims.csv side by side as a Markdown table.",
    )
    parser.add_argument("runs", nargs="+", help="run dirs (results/NAME) or claims.csv files")
    args = parser.parse_args(argv)
    tables = {}
    try:
        for run in args.runs:
            path = claims_csv(run)
            if not path.is_file():
                raise ClaimsError(f"{path}: not found (the workflow's claims_table rule writes it)")
            table = read_table(path, ["id", "claim", "paper_value", "this_run", "verdict"])
            label = run_label(run)
            tables[str(run) if label in tables else label] = table
    except ClaimsError as err:
        print(f"rlpredict.claims: error: {err}", file=sys.stderr)
        return 1
    print(side_by_side(tables).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
