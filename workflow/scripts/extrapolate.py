import _rlpredict  # noqa: F401
import torch

from rlpredict.extrapolate import extrapolate_weights, lr_schedule
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    job, settings = smk.params.job, smk.params.settings
    checkpoints = dict(zip(job.steps, smk.input.checkpoints, strict=True))
    trl = smk.params.lr_schedule
    schedule = lr_schedule(
        trl["lr_schedule"].removesuffix("_with_warmup"),
        trl["lr"],
        total_steps=trl["steps"],
        warmup_steps=trl["warmup_steps"],
    )
    extrapolate_weights(
        job.name,
        checkpoints,
        None if job.alpha is not None else job.target_step,  # a variant planned by its α
        smk.output.model,
        alpha=job.alpha,
        fit=job.fit,
        time=settings["time"],
        lr_schedule=schedule,
    )


run_script(main, snakemake)  # noqa: F821
