import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.figures import save_figure
from rlpredict.sweep import regime_figure
from rlpredict.workflow import run_script


def main(smk):
    fig = regime_figure(pd.read_csv(smk.input.table), float(smk.params.window))
    save_figure(fig, smk.output.png, smk.output.pdf)


run_script(main, snakemake)  # noqa: F821
