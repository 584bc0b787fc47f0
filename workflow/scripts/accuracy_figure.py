import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.figures import accuracy_label, accuracy_vs_step, save_figure, save_table_html
from rlpredict.workflow import run_script


def main(smk):
    table = pd.read_csv(smk.input.table)
    history = pd.read_csv(smk.input.history)
    fig = accuracy_vs_step(table, history, smk.params.run, accuracy_label(smk.params.eval_settings))
    save_figure(fig, smk.output.png, smk.output.pdf)
    save_table_html(table, f"{smk.params.run}: accuracy vs step", smk.output.table_html)


run_script(main, snakemake)  # noqa: F821
