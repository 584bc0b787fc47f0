import _rlpredict  # noqa: F401
import torch

from rlpredict.extrapolate import extrapolate_weights
from rlpredict.schedules import LRSchedule
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    job, settings = smk.params.job, smk.params.settings
    checkpoints = dict(zip(job.steps, smk.input.checkpoints, strict=True))
    # the schedule of the backend that trained the run (rlpredict.schedules.run_lr_schedule)
    recorded = smk.params.lr_schedule
    schedule = LRSchedule(**recorded) if recorded is not None else None
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
