import shutil
from pathlib import Path

import _rlpredict  # noqa: F401

from rlpredict.atomic import atomic_output_file
from rlpredict.train.verl_checkpoints import convert_step
from rlpredict.train.verl_run import check_saved, train_with_verl
from rlpredict.workflow import run_script


def main(smk):
    segment, verl_dir = smk.params.segment, Path(smk.params.verl_dir)
    history = train_with_verl(
        smk.params.config,
        model_path=smk.input.start,
        train_files=smk.input.train,
        val_files=smk.input.get("val"),
        verl_dir=verl_dir,
        steps=[segment.m],
        threads=smk.threads,
        log_file=smk.log[0],
    )
    convert_step(check_saved(verl_dir, [segment.m])[segment.m], smk.output.model)
    with atomic_output_file(smk.output.history) as tmp:
        history.assign(real_step=history["step"] + segment.real_start).to_csv(tmp, index=False)
    # The segment is finished: its verl checkpoints (shards, optimizer) are not read again.
    shutil.rmtree(verl_dir)


run_script(main, snakemake)  # noqa: F821
