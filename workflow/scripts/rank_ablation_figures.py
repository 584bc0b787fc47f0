import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.figures import rank1_energy_share, rank_ablation, save_figure, save_table_html
from rlpredict.workflow import run_script


def main(smk):
    table = pd.read_csv(smk.input.table, dtype={"rank": str})
    save_table_html(table, f"{smk.params.run}: rank-k ablation", smk.output.table_html)
    save_figure(rank_ablation(table, smk.params.run), smk.output.rank_png, smk.output.rank_pdf)
    spectra = pd.concat([pd.read_parquet(p) for p in smk.input.spectra], ignore_index=True)
    fig = rank1_energy_share(spectra, smk.params.run)
    save_figure(fig, smk.output.energy_png, smk.output.energy_pdf)


run_script(main, snakemake)  # noqa: F821
