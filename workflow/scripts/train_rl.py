import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.atomic import atomic_output_file
from rlpredict.tasks.arithmetic import load_split
from rlpredict.train.trl_backend import export_checkpoints, train_grpo
from rlpredict.workflow import run_script


def main(smk):
    train = smk.params.train
    settings = {"steps": train["steps"], "save_every": train["save_every"], **train["trl"]}
    history = train_grpo(
        smk.input.base,
        load_split(smk.input.train),
        smk.params.state_dir,
        settings,
        seed=smk.params.seed,
        threads=smk.threads,
        task=smk.params.task_name,
    )
    export_checkpoints(
        smk.params.state_dir,
        smk.input.base,
        out_dir=smk.output.checkpoints[0].rsplit("/", 1)[0],
        steps=smk.params.steps,
    )
    with atomic_output_file(smk.output.history) as tmp:
        pd.DataFrame([row for row in history if "reward" in row]).to_csv(tmp, index=False)


run_script(main, snakemake)  # noqa: F821
