import _rlpredict  # noqa: F401
import torch

from rlpredict.ablate import ablate_model
from rlpredict.evaluate import write_json
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    stats = ablate_model(
        smk.input.base,
        smk.input.checkpoint,
        smk.output.model,
        rank=smk.params.rank,
        scale=smk.params.scale,
        lam=smk.params.lam,
        module_regex=smk.params.modules,
    )
    write_json(stats, smk.output.stats)


run_script(main, snakemake)  # noqa: F821
