import _rlpredict  # noqa: F401

from rlpredict.alpharl import alpharl_fits
from rlpredict.tables import load_eval
from rlpredict.workflow import run_script, write_parquet


def main(smk):
    steps, settings = smk.params.steps, smk.params.settings
    checkpoints = dict(zip(steps, smk.input.checkpoints, strict=True))
    labels = {s: load_eval(p)["accuracy"] for s, p in zip(steps, smk.input.dev, strict=True)}
    fits = alpharl_fits(
        checkpoints,
        {s: acc for s, acc in labels.items() if s > 0},
        scale=settings["scale"],
        module_regex=settings["modules"],
    )
    write_parquet(fits, smk.output[0])


run_script(main, snakemake)  # noqa: F821
