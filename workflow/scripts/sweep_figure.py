import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.figures import save_figure, save_table_html
from rlpredict.sweep import regime_figure, summary_markdown
from rlpredict.workflow import run_script


def main(smk):
    table = pd.read_csv(smk.input.table)
    fig = regime_figure(table, float(smk.params.window))
    save_figure(fig, smk.output.png, smk.output.pdf)
    sections = {
        "Per setting (mean ± sd over seeds)": summary_markdown(pd.read_csv(smk.input.summary)),
        "Per run": table,
    }
    save_table_html(sections, "Regime sweep", smk.output.table_html)


run_script(main, snakemake)  # noqa: F821
