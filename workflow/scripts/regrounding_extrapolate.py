import _rlpredict  # noqa: F401
import torch

from rlpredict.regrounding import extrapolate_segment
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    extrapolate_segment(smk.params.segment, smk.input.start, smk.input.end, smk.output.model)


run_script(main, snakemake)  # noqa: F821
