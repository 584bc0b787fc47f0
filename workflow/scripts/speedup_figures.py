import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.figures import (
    predictions_vs_step,
    save_figure,
    save_table_html,
    speedup_vs_accuracy,
)
from rlpredict.workflow import run_script


def main(smk):
    table = pd.read_csv(smk.input.table)
    steps = pd.read_csv(smk.input.steps)
    save_table_html(table, f"{smk.params.run}: speedup vs accuracy", smk.output.table_html)
    fig = predictions_vs_step(steps, table, smk.params.run)
    save_figure(fig, smk.output.accuracy_png, smk.output.accuracy_pdf)
    fig = speedup_vs_accuracy(table, smk.params.run)
    save_figure(fig, smk.output.speedup_png, smk.output.speedup_pdf)


run_script(main, snakemake)  # noqa: F821
