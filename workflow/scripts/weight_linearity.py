import _rlpredict  # noqa: F401

from rlpredict.evaluate import write_json
from rlpredict.linearity import weight_linearity
from rlpredict.workflow import run_script, write_parquet


def main(smk):
    settings = smk.params.settings
    table, summary = weight_linearity(
        dict(zip(smk.params.steps, smk.input.checkpoints, strict=True)),
        fraction=settings["weight_fraction"],
        min_samples=settings["weight_min_samples"],
        min_change=settings["weight_min_change"],
        min_distinct=settings["weight_min_distinct"],
        seed=smk.params.seed,
    )
    write_parquet(table, smk.output.table)
    write_json(summary, smk.output.summary)


run_script(main, snakemake)  # noqa: F821
