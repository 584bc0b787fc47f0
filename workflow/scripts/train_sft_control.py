import _rlpredict  # noqa: F401
import pandas as pd
import torch

from rlpredict.atomic import atomic_output_file
from rlpredict.tasks.arithmetic import load_split
from rlpredict.train.sft_control import train_sft_control
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    history = train_sft_control(
        smk.input.base,
        load_split(smk.input.train),
        out_dirs=dict(zip(smk.params.steps, smk.output.checkpoints, strict=True)),
        settings=smk.params.settings,
        seed=smk.params.seed,
        task=smk.params.task_name,
    )
    with atomic_output_file(smk.output.history) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


run_script(main, snakemake)  # noqa: F821
