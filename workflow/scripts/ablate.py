import _rlpredict  # noqa: F401
import torch

from rlpredict.ablate import ablate_model
from rlpredict.evaluate import write_json
from rlpredict.workflow import check_rank_against_model, run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    # A hub model's sizes are unknown when the config is checked: check the rank here.
    check_rank_against_model(smk.params.rank, smk.input.base, smk.params.modules)
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
