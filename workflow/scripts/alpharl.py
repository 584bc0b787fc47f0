import _rlpredict  # noqa: F401
import pandas as pd
import torch

from rlpredict.alpharl import LabelsDoNotVary, alpharl_extrapolate
from rlpredict.checkpoints import write_not_built
from rlpredict.tables import load_eval
from rlpredict.workflow import run_script, write_parquet


def main(smk):
    torch.set_num_threads(smk.threads)
    job, settings = smk.params.job, smk.params.settings
    window = [s for s in job.steps if s > 0]
    dev = dict(zip(job.steps, smk.input.dev, strict=True))
    try:
        result = alpharl_extrapolate(
            dict(zip(job.steps, smk.input.checkpoints, strict=True)),
            {step: load_eval(dev[step])["accuracy"] for step in window},
            smk.output.model,
            final_step=job.target_step,
            target=smk.wildcards.target,
            final_accuracy=load_eval(smk.input.final_dev)["accuracy"],
            scale=settings["scale"],
            add_to=settings["add_to"],
            module_regex=settings["modules"],
        )
    except LabelsDoNotVary as err:
        # one method that cannot run on this window is a result, not a failed workflow
        reason = f"not run: {err}"
        write_not_built(smk.output.model, reason, smk.input.checkpoints)
        write_parquet(
            pd.DataFrame({"target": [smk.wildcards.target], "skipped": [reason]}), smk.output.fits
        )
        return
    fits = result.fits.assign(
        target=smk.wildcards.target,
        target_accuracy=result.target_accuracy,  # y* used, in [0, 1]
        target_accuracy_raw=result.target_accuracy_raw,  # a forecast before clamping
    )
    write_parquet(fits, smk.output.fits)


run_script(main, snakemake)  # noqa: F821
