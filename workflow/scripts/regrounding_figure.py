import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.figures import accuracy_label, regrounding, save_figure, save_table_html
from rlpredict.workflow import run_script


def main(smk):
    table = pd.read_csv(smk.input.table)
    fig = regrounding(table, smk.params.run, accuracy_label(smk.params.eval_settings))
    save_figure(fig, smk.output.png, smk.output.pdf)
    title = f"{smk.params.run}: periodic re-grounding"
    sections = {
        part.replace("_", " "): table[table["table"] == part].dropna(axis=1, how="all")
        for part in ("steps_to_target", "equal_budget", "curve")
    }
    save_table_html(sections, title, smk.output.table_html)


run_script(main, snakemake)  # noqa: F821
