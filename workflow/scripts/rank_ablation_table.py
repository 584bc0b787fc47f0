import _rlpredict  # noqa: F401

from rlpredict.tables import rank_ablation, write_table
from rlpredict.workflow import run_script


def main(smk):
    keys = [f"{source}/{rank}" for source in smk.params.sources for rank in smk.params.ranks]
    table = rank_ablation(
        evals=dict(zip(keys, smk.input.evals, strict=True)),
        finals=dict(zip(smk.params.sources, smk.input.finals, strict=True)),
        base=smk.input.base,
        stats=dict(zip(keys, smk.input.stats, strict=True)),
    )
    write_table(table, smk.output.csv, smk.output.md)


run_script(main, snakemake)  # noqa: F821
