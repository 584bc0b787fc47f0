import shutil

import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.atomic import atomic_output_file
from rlpredict.schedules import trl_lr_schedule
from rlpredict.tasks.arithmetic import load_split
from rlpredict.train.trl_backend import export_segment, train_grpo
from rlpredict.workflow import run_script


def main(smk):
    segment, train = smk.params.segment, smk.params.train
    trl = train["trl"]
    # restart: the schedule over the segment's M steps; continue: over the chain's real steps
    total = segment.m if segment.lr_mode == "restart" else smk.params.chain_steps
    settings = {"steps": segment.m, "save_every": min(train["save_every"], segment.m), **trl}
    history = train_grpo(
        smk.input.start,
        load_split(smk.input.train),
        smk.params.state_dir,
        settings,
        seed=segment.data_seed(smk.params.seed),
        threads=smk.threads,
        task=smk.params.task_name,
        lr_schedule=trl_lr_schedule(trl, total),
        lr_offset=segment.lr_steps[0],
        optimizer_state=smk.input.get("optimizer"),
    )
    export_segment(smk.params.state_dir, segment.m, smk.output.model, smk.output.get("optimizer"))
    with atomic_output_file(smk.output.history) as tmp:
        rows = pd.DataFrame([row for row in history if "reward" in row])
        rows.assign(real_step=rows["step"] + segment.real_start).to_csv(tmp, index=False)
    # The segment is finished: its resumable state (a model and Adam moments per save) is not
    # read again; the end model and, with optimizer keep, the optimizer state are outputs.
    shutil.rmtree(smk.params.state_dir)


run_script(main, snakemake)  # noqa: F821
