import _rlpredict  # noqa: F401

from rlpredict.sweep import regime_table, summary_table, write_sweep_tables
from rlpredict.workflow import run_script


def main(smk):
    table = regime_table(smk.params.runs)
    summary = summary_table(table)
    write_sweep_tables(table, summary, smk.output.csv, smk.output.summary, smk.output.md)


run_script(main, snakemake)  # noqa: F821
