"""Figures (PNG for the report, PDF for papers); every figure says what it shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig, png_path: str | Path, pdf_path: str | Path) -> None:
    for path in (Path(png_path), Path(pdf_path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(path)
    plt.close(fig)


def accuracy_vs_step(
    table: pd.DataFrame, history: pd.DataFrame | None, run: str, metric_label: str
):
    """Test accuracy of every checkpoint (±1 s.e.) and, below it, the training reward."""
    panels = 2 if history is not None and len(history) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(6.4, 2.6 + 2.2 * panels), sharex=True)
    axes = [axes] if panels == 1 else list(axes)
    ax = axes[0]
    ax.errorbar(
        table["step"], table["accuracy"], yerr=table["stderr"], marker="o", capsize=3,
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
