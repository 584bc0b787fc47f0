"""Figures (PNG for the report, PDF for papers) and the report's browser view of each table.

Every figure function takes the tables in the schema the workflow writes them, draws every row
it is given (nothing is filtered by a fixed list of names) and returns the ``Figure``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rlpredict.atomic import atomic_output_file, atomic_write_text  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# Display order of the usual projections (matched on the name's last part); modules with other
# names are drawn after them, in the order the table lists them.
MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def module_order(names) -> list[str]:
    """The distinct module names of a table, the usual projections first (q, k, v, o, gate, up,
    down, matched on the last dotted part: ``self_attn.q_proj`` and ``q_proj`` alike), then the
    others in their order of appearance. Never drops a name."""
    distinct = list(dict.fromkeys(names))
    rank = {short: i for i, short in enumerate(MODULE_ORDER)}
    return sorted(distinct, key=lambda n: rank.get(str(n).rsplit(".", 1)[-1], len(rank)))


def layer_module_grid(table: pd.DataFrame, module_column: str, value: str) -> pd.DataFrame:
    """Layers (rows, ascending) × modules (columns, ``module_order``) of ``table[value]``.

    Every module the table names gets a column, also one whose values are all NaN (drawn
    blank); tensors outside the decoder layers (no layer index) form a last row.
    """
    grid = table.pivot_table(
        index="layer", columns=module_column, values=value, aggfunc="mean", dropna=False
    )
    return grid.reindex(columns=module_order(table[module_column])).sort_index()


def layer_ticks(layers: Sequence, most: int = 16) -> tuple[list[int], list[str]]:
    """Row positions and labels of a layer axis with at most ``most`` labels: every k-th
    layer from the first, so that 30 layers do not overprint; the ``other`` row (NaN layer:
    tensors outside the decoder layers) is always labelled."""
    every = max(1, math.ceil(len(layers) / most))
    ticks = [
        (i, "other" if pd.isna(layer) else str(int(layer)))
        for i, layer in enumerate(layers)
        if pd.isna(layer) or i % every == 0
    ]
    return [i for i, _ in ticks], [label for _, label in ticks]


def _heatmap(fig: Figure, ax, grid: pd.DataFrame):
    image = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
    ax.set_yticks(*layer_ticks(list(grid.index)))
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, fraction=0.05)
    return image


def save_figure(fig: Figure, png_path: str | Path, pdf_path: str | Path) -> None:
    """Write ``fig`` as PNG (150 dpi) and PDF, each atomically, then close it."""
    for path in (png_path, pdf_path):
        with atomic_output_file(path) as tmp:  # ends in the suffix savefig takes the format from
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)


def accuracy_vs_step(
    table: pd.DataFrame, history: pd.DataFrame | None, run: str, metric_label: str
) -> Figure:
    """Test accuracy of every checkpoint (±1 s.e.) and, below it, the training reward.

    ``table``: ``tables.accuracy_vs_step`` (step, accuracy, stderr); ``history``: the training
    history (step, reward) or None. One point per table row, one per history row.
    """
    panels = 2 if history is not None and len(history) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(6.4, 2.6 + 2.2 * panels), sharex=True)
    axes = [axes] if panels == 1 else list(axes)
    ax = axes[0]
    ax.errorbar(
        table["step"],
        table["accuracy"],
        yerr=table["stderr"],
        marker="o",
        capsize=3,
        label="checkpoint (test split)",
    )
    ax.axhline(table["accuracy"].iloc[0], color="grey", ls="--", lw=1, label="base model")
    ax.set_ylabel(metric_label)
    ax.set_title(f"{run}: test accuracy along RL training")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    if panels == 2:
        ax = axes[1]
        ax.plot(history["step"], history["reward"], color="tab:orange", lw=1)
        ax.set_ylabel("mean training reward\n(sampled, per logged step)")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("RL step")
    fig.tight_layout()
    return fig


def rank_ablation(table: pd.DataFrame, run: str) -> Figure:
    """Relative accuracy and gain recovered vs the rank kept, one line per run type (source).

    ``table``: ``tables.rank_ablation`` (``rank`` as strings); one point per row in each panel.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ranks = list(dict.fromkeys(table["rank"]))
    positions = {rank: i for i, rank in enumerate(ranks)}
    for source, group in table.groupby("source", sort=False):
        x = [positions[r] for r in group["rank"]]
        label = {"rl": "RL (GRPO)", "sft": "SFT control"}.get(source, source)
        axes[0].errorbar(
            x,
            group["relative_accuracy"],
            yerr=group["stderr"] / group["final_accuracy"],
            marker="o",
            capsize=3,
            label=label,
        )
        axes[1].plot(x, group["gain_recovered"], marker="o", label=label)
    axes[0].axhline(1.0, color="grey", ls="--", lw=1)
    axes[0].set_ylabel("relative accuracy = acc(ablated) / acc(trained)")
    axes[1].axhline(1.0, color="grey", ls="--", lw=1)
    axes[1].axhline(0.0, color="grey", ls=":", lw=1)
    axes[1].set_ylabel("gain recovered = Δacc(ablated) / Δacc(trained)")
    for ax in axes:
        ax.set_xticks(range(len(ranks)), [r.replace("pct", "%") for r in ranks])
        ax.set_xlabel("rank kept of ΔW per matrix (Frobenius-rescaled)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{run}: rank-k ablation of the final update")
    fig.tight_layout()
    return fig


def rank1_energy_share(spectra: pd.DataFrame, run: str) -> Figure:
    """Left: median (and interquartile range) over matrices of σ₁²/‖ΔW‖_F² along training.
    Right: the same share per layer × module at the final step of each run type.

    ``spectra``: ``spectral.spectrum_table`` rows of every step with a ``source`` column
    (``rl``/``sft``); one heatmap cell per matrix of the final step.
    """
    sources = list(dict.fromkeys(spectra["source"]))
    fig, axes = plt.subplots(
        1,
        1 + len(sources),
        figsize=(4.2 * (1 + len(sources)), 3.8),
        gridspec_kw={"width_ratios": [1.4] + [1] * len(sources)},
    )
    ax = axes[0]
    for source in sources:
        by_step = spectra[spectra["source"] == source].groupby("step")["energy_share_1"]
        q = by_step.quantile([0.25, 0.5, 0.75]).unstack()
        ax.plot(q.index, q[0.5], marker="o", label=source.upper())
        ax.fill_between(q.index, q[0.25], q[0.75], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("σ₁² / ‖ΔW‖²_F (median, IQR)")
    ax.set_title("rank-1 energy share of ΔW_t = W_t − W_0")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for ax, source in zip(axes[1:], sources, strict=True):
        part = spectra[spectra["source"] == source]
        final = part[part["step"] == part["step"].max()]
        _heatmap(fig, ax, layer_module_grid(final, "kind", "energy_share_1"))
        ax.set_title(f"{source.upper()}, step {int(final['step'].max())}")
    fig.suptitle(f"{run}: how much of the update's energy its top direction holds")
    fig.tight_layout()
    return fig


def predictions_vs_step(steps: pd.DataFrame, table: pd.DataFrame, run: str) -> Figure:
    """Accuracy along training, with each method's prediction of the final model drawn at the
    step where its window ends (what you would know then).

    ``steps``: ``tables.accuracy_vs_step``; ``table``: ``tables.speedup_vs_accuracy``. One
    point per row with an accuracy (rows of skipped jobs have none).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(steps["step"], steps["accuracy"], color="black", marker=".", label="RL checkpoints")
    ax.axhline(steps["accuracy"].iloc[-1], color="black", ls="--", lw=1, label="final model")
    ran = table.dropna(subset=["accuracy"])
    methods = list(dict.fromkeys(ran["method"]))
    offsets = {m: (i - (len(methods) - 1) / 2) * 0.006 for i, m in enumerate(methods)}
    span = steps["step"].max()
    for i, method in enumerate(methods):
        part = ran[ran["method"] == method]
        x = part["window_last_step"] + offsets[method] * span
        ax.errorbar(
            x,
            part["accuracy"],
            yerr=part["stderr"],
            fmt=MARKERS[i % len(MARKERS)],
            capsize=2,
            label=method,
        )
    ax.set_xlabel("RL step (predictions drawn at the end of their window)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{run}: predicting the final model from an early window")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def speedup_vs_accuracy(table: pd.DataFrame, run: str) -> Figure:
    """Relative accuracy vs speedup per method (RL steps, and with the methods' extra cost).

    ``table``: ``tables.speedup_vs_accuracy``; one point per row with an accuracy in each panel,
    plus one ``stop at window`` point per window.
    """
    ran = table.dropna(subset=["accuracy"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, column, label in (
        (axes[0], "rl_step_speedup", "RL-step speedup = T / last window step"),
        (axes[1], "cost_aware_speedup", "cost-aware speedup (adds SVDs, dev evals, writing)"),
    ):
        for i, method in enumerate(dict.fromkeys(ran["method"])):
            part = ran[ran["method"] == method].sort_values(column)
            ax.plot(
                part[column],
                part["relative_accuracy"],
                MARKERS[i % len(MARKERS)] + "-",
                label=method,
            )
        stop = ran.drop_duplicates("window").sort_values("rl_step_speedup")
        ax.plot(
            stop["rl_step_speedup"],
            stop["stop_relative_accuracy"],
            "k:",
            marker="x",
            label="stop at window",
        )
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.axhline(0.96, color="grey", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative accuracy = acc / acc(final checkpoint)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{run}: speedup versus accuracy kept (dotted: 96 %)")
    fig.tight_layout()
    return fig


def linearity(
    weights: pd.DataFrame, logprobs: pd.DataFrame, rank1: pd.DataFrame, run: str
) -> Figure:
    """Histograms of per-weight and per-token R² vs step, and the rank-1 PLS R² heatmap.

    ``weights``: ``linearity.weight_r2_table``; ``logprobs``: ``linearity.logprob_r2_table``;
    ``rank1``: ``alpharl.alpharl_fits`` (``module`` as the analysis names it, e.g.
    ``self_attn.q_proj``). Every finite R² is counted in a histogram bin (values are clipped to
    [0, 1] against rounding); one heatmap cell per fitted module.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, table, what in (
        (axes[0], weights, "sampled weights"),
        (axes[1], logprobs, "response tokens' log-probs"),
    ):
        values = table["r2"].dropna() if len(table) else pd.Series(dtype=float)
        ax.hist(values.clip(0, 1), bins=40, range=(0, 1), color="tab:blue", alpha=0.8)
        if len(values):
            ax.axvline(
                values.median(),
                color="black",
                ls="--",
                lw=1,
                label=f"median {values.median():.2f} (n={len(values)})",
            )
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlabel("R² of a straight line vs RL step")
        ax.set_ylabel("count")
        ax.set_title(what)
    _heatmap(fig, axes[2], layer_module_grid(rank1, "module", "r2"))
    axes[2].set_title("rank-1 trajectory: PLS R² vs dev accuracy")
    fig.suptitle(f"{run}: how linear is RL training?")
    fig.tight_layout()
    return fig


TABLE_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 0.5em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
"""


def accuracy_label(settings: dict) -> str:
    """What the headline accuracy is, from the ``eval`` settings: avg@k at a temperature, or
    greedy exact match."""
    if settings.get("temperature", 0) > 0 and settings.get("accuracy", "sampled") == "sampled":
        return f"accuracy, avg@{settings['repeats']} at T = {settings['temperature']:g}"
    return "exact-match accuracy (greedy)"


def regrounding(table: pd.DataFrame, run: str, ylabel: str = "test accuracy") -> Figure:
    """Periodic re-grounding: test accuracy (± s.e.) against real RL steps for standard RL
    (black) and for each (M, N) chain (one colour each): its extrapolated models (solid) and
    segment ends (dashed), from the ``curve`` rows of ``tables/regrounding.csv``; dotted grey
    lines mark the target accuracies of its ``steps_to_target`` rows."""
    curves = table[table["table"] == "curve"]
    chains = [c for c in curves["chain"].unique() if c != "standard"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (series, curve) in enumerate(curves.groupby("series", sort=False)):
        curve = curve.sort_values("real_step")
        chain = curve["chain"].iloc[0]
        ax.errorbar(
            curve["real_step"],
            curve["accuracy"],
            yerr=curve["stderr"],
            label=series,
            linestyle="--" if (curve["point"] == "segment end").all() else "-",
            color="black" if chain == "standard" else f"C{chains.index(chain) % 10}",
            marker=MARKERS[i % len(MARKERS)],
            markersize=4,
            capsize=2,
        )
    targets = table.loc[table["table"] == "steps_to_target", "target"].unique()
    for k, target in enumerate(targets):
        label = "target accuracies (steps to target)" if k == 0 else None
        ax.axhline(target, color="grey", linestyle=":", linewidth=0.8, label=label)
    ax.set_xlabel("real RL steps (extrapolated steps not counted)")
    ax.set_ylabel(f"test {ylabel}")
    ax.set_title(f"{run}: periodic re-grounding (RL-Extra) vs standard RL")
    ax.legend(fontsize=7)
    return fig


def format_cell(value: object) -> str:
    """How the report shows one table cell: numbers to 4 significant digits, empty as ``–``."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def table_html(sections: Mapping[str, pd.DataFrame], title: str) -> str:
    """A standalone HTML page (no scripts, no external files) showing each table under its
    heading, every row and column, cells as ``format_cell`` writes them. The Snakemake report
    displays such a page inline, where a CSV could only be downloaded."""
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{TABLE_STYLE}</style></head><body>",
    ]
    for heading, table in sections.items():
        if heading:
            parts.append(f"<h3>{html.escape(heading)}</h3>")
        shown = table.astype(object).map(format_cell)
        parts.append(shown.to_html(index=False, border=0, escape=True))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def save_table_html(
    sections: Mapping[str, pd.DataFrame] | pd.DataFrame, title: str, path: str | Path
) -> None:
    """Write ``table_html`` of one table (or of titled sections) to ``path``, atomically."""
    if isinstance(sections, pd.DataFrame):
        sections = {"": sections}
    atomic_write_text(path, table_html(sections, title), encoding="utf-8")
