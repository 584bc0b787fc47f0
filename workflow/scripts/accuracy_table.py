import _rlpredict  # noqa: F401

from rlpredict.tables import accuracy_vs_step, write_table
from rlpredict.workflow import run_script


def main(smk):
    table = accuracy_vs_step(dict(zip(smk.params.steps, smk.input.evals, strict=True)))
    write_table(table, smk.output.csv, smk.output.md)


run_script(main, snakemake)  # noqa: F821
