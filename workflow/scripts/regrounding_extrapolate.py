import _rlpredict  # noqa: F401
import torch

from rlpredict.extrapolate import extrapolate_weights
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    segment = smk.params.segment
    # two-point: t0 the segment's start model, t1 its end, t' = t0 + M + N: α = (M + N) / M
    extrapolate_weights(
        "two-point",
        {segment.virtual_start: smk.input.start, segment.virtual_end: smk.input.end},
        segment.virtual_target,
        smk.output.model,
    )


run_script(main, snakemake)  # noqa: F821
