"""Aggregation of evaluation JSONs into tables (CSV + Markdown)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from rlpredict.atomic import atomic_write_text


def load_eval(path: str | Path) -> dict:
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable evaluation result ({err})") from err
    if "accuracy" not in result:
        raise ValueError(f"{path}: evaluation result has no 'accuracy'")
    return result


def accuracy_vs_step(evals: Mapping[int, str | Path]) -> pd.DataFrame:
    """One row per checkpoint: accuracy, its standard error, and its place between the base
    (step 0) and the final checkpoint."""
    rows = []
    for step, path in sorted(evals.items()):
        result = load_eval(path)
        rows.append(
            {
                "step": step,
                "accuracy": result["accuracy"],
                "stderr": result["accuracy_stderr"],
                "n": result["n"],
            }
        )
    table = pd.DataFrame(rows)
    base, final = table["accuracy"].iloc[0], table["accuracy"].iloc[-1]
    table["relative_accuracy"] = table["accuracy"] / final if final else float("nan")
    gain = final - base
    table["gain_recovered"] = (table["accuracy"] - base) / gain if gain else float("nan")
    return table


def write_table(table: pd.DataFrame, csv_path: str | Path, md_path: str | Path) -> None:
    """CSV for machines, Markdown for people; both written atomically."""
    csv = table.to_csv(index=False)
    markdown = table.to_markdown(index=False, floatfmt=".4g") + "\n"
    atomic_write_text(csv_path, csv)
    atomic_write_text(md_path, markdown)


def rank_ablation(
    evals: Mapping[str, str | Path],
    finals: Mapping[str, str | Path],
    base: str | Path,
    stats: Mapping[str, str | Path],
) -> pd.DataFrame:
    """One row per (source, rank): accuracy of the ablated model, relative accuracy
    acc/acc(final), gain recovered (acc − acc(base))/(acc(final) − acc(base)), and the median
    over matrices of the unscaled energy the kept directions hold (Σᵢ≤ₖ σᵢ² / ‖ΔW‖_F²).

    Keys of ``evals`` and ``stats`` are ``"{source}/{rank}"``; of ``finals``, the source.
    """
    base_acc = load_eval(base)["accuracy"]
    rows = []
    for key, path in evals.items():
        source, rank = key.split("/")
        result = load_eval(path)
        final_acc = load_eval(finals[source])["accuracy"]
        modules = json.loads(Path(stats[key]).read_text())["modules"]
        kept = pd.Series([m["energy_kept"] for m in modules.values()])
        share1 = pd.Series([m["energy_share"] for m in modules.values()])
        gain = final_acc - base_acc
        rows.append(
            {
                "source": source,
                "rank": rank,
                "accuracy": result["accuracy"],
                "stderr": result["accuracy_stderr"],
                "final_accuracy": final_acc,
                "base_accuracy": base_acc,
                "relative_accuracy": result["accuracy"] / final_acc if final_acc else float("nan"),
                "gain_recovered": (result["accuracy"] - base_acc) / gain if gain else float("nan"),
                "energy_kept_median": kept.median(),
                "rank1_energy_share_median": share1.median(),
                "matrices": len(modules),
            }
        )
    return pd.DataFrame(rows)


def benchmark_seconds(paths) -> float:
    """Wall seconds summed over Snakemake benchmark TSVs (column ``s``)."""
    return float(sum(pd.read_csv(p, sep="\t")["s"].sum() for p in paths))


ORACLE_NOTE = "oracle: y* from the final model"
VERL_STEP_SECONDS = "timing_s/step"


def training_seconds(history: pd.DataFrame, final_step: int) -> tuple[float, str]:
    """Wall seconds of training to ``final_step`` over every attempt (resumes included),
    and where they come from, from a training history (``analysis/train_history.csv``).

    - TRL runs: ``train_seconds`` at ``final_step`` (cumulative, carried across resumes in
      the checkpoints' trainer state);
    - verl runs: verl's per-step ``timing_s/step`` summed over steps 1..final_step (the
      console log of every launch is kept; start-up time is not included).

    NaN with the reason when the history records neither (e.g. a run trained elsewhere).
    """
    if "train_seconds" in history and (history["step"] == final_step).any():
        row = history[history["step"] == final_step].iloc[-1]
        attempts = int(row["train_attempts"]) if "train_attempts" in row else 1
        return float(row["train_seconds"]), (
            f"train_seconds at step {final_step} of the training history "
            f"({attempts} attempt{'s' if attempts != 1 else ''})"
        )
    if VERL_STEP_SECONDS in history:
        steps = history[(history["step"] >= 1) & (history["step"] <= final_step)]
        missing = sorted(set(range(1, final_step + 1)) - set(steps["step"]))
        if not missing:
            return float(steps[VERL_STEP_SECONDS].sum()), (
                f"verl's {VERL_STEP_SECONDS} summed over steps 1-{final_step} "
                "of the training history (every launch)"
            )
        return math.nan, f"training time unknown: no {VERL_STEP_SECONDS} for steps {missing[:5]}"
    return math.nan, "training time unknown: not recorded in the training history"


def speedup_vs_accuracy(
    jobs: list,
    evals: Mapping[str, str | Path],
    final: str | Path,
    base: str | Path,
    history: pd.DataFrame,
    final_step: int,
    costs: Mapping[str, list],
) -> pd.DataFrame:
    """One row per (method, window): the prediction's test accuracy against stopping at the
    window and against training to the end, with two speedups:

    - ``rl_step_speedup`` = final step / last window step (RL steps saved, nothing else);
    - ``cost_aware_speedup`` = time to train to the final step / (time to train to the last
      window step + measured time of the method's extra work: SVDs and fits, dev evaluations
      of window checkpoints for AlphaRL, writing the model). Training time per step is the
      whole training time (:func:`training_seconds`: every attempt of a resumed run) divided
      by its steps; columns ``train_seconds`` and ``train_seconds_source`` say what it was.
    """
    final_acc, base_acc = load_eval(final)["accuracy"], load_eval(base)["accuracy"]
    train_seconds, source = training_seconds(history, final_step)
    per_step = train_seconds / final_step
    rows = []
    for job in jobs:
        last = job.steps[-1] if job.steps else None
        row = {
            "method": job.method,
            "window": float(job.window),
            "window_last_step": last,
            "target_step": job.target_step,
            "uses_final_result": job.uses_final_result,
            "note": "; ".join(
                filter(None, [ORACLE_NOTE if job.uses_final_result else "", job.skipped])
            ),
            "accuracy": math.nan,
            "stderr": math.nan,
        }
        result = load_eval(evals[job.model_id]) if job.skipped is None else {}
        if result.get("skipped"):
            row["note"] = "; ".join(filter(None, [row["note"], result["skipped"]]))
        elif job.skipped is None:
            stop = load_eval(evals[f"step_{last}"])["accuracy"]
            extra = benchmark_seconds(costs.get(job.model_id, []))
            row.update(
                accuracy=result["accuracy"],
                stderr=result["accuracy_stderr"],
                relative_accuracy=result["accuracy"] / final_acc if final_acc else float("nan"),
                gain_recovered=(result["accuracy"] - base_acc) / (final_acc - base_acc)
                if final_acc != base_acc
                else float("nan"),
                stop_at_window_accuracy=stop,
                stop_relative_accuracy=stop / final_acc if final_acc else float("nan"),
                rl_step_speedup=job.target_step / last,
                extra_seconds=extra,
                cost_aware_speedup=job.target_step * per_step / (last * per_step + extra),
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    table["final_accuracy"], table["base_accuracy"] = final_acc, base_acc
    table["train_seconds"], table["train_seconds_source"] = train_seconds, source
    return table


def linearity_summary(weights: dict, logprobs: dict, rank1: pd.DataFrame) -> pd.DataFrame:
    """The three linearity diagnostics side by side (the papers' numbers in the last column)."""
    r2 = rank1["r2"].dropna()
    rows = [
        ("weights", "series kept", weights.get("n_kept"), ""),
        ("weights", "median R²", weights.get("median_r2"), "0.75–0.87 (RL), 0.43 (SFT)"),
        ("weights", "fraction R² > 0.7", weights.get("frac_r2_gt_0.7"), "> 0.70"),
        ("token log-probs", "tokens kept", logprobs.get("n_kept"), ""),
        ("token log-probs", "median R²", logprobs.get("median_r2"), "high (Fig. 2)"),
        ("token log-probs", "fraction R² > 0.7", logprobs.get("frac_r2_gt_0.7"), ""),
        ("rank-1 (PLS vs dev accuracy)", "modules", len(r2), ""),
        ("rank-1 (PLS vs dev accuracy)", "median R²", r2.median(), "0.914 average"),
        ("rank-1 (PLS vs dev accuracy)", "fraction R² > 0.7", (r2 > 0.7).mean(), ""),
    ]
    return pd.DataFrame(rows, columns=["what", "statistic", "value", "papers"])
