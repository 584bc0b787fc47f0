"""Aggregation of evaluation JSONs into tables (CSV + Markdown)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd


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
    for path, text in (
        (Path(csv_path), table.to_csv(index=False)),
        (Path(md_path), table.to_markdown(index=False, floatfmt=".4g") + "\n"),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


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
