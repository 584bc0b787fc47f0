import os
import sys
from pathlib import Path

import _rlpredict  # noqa: F401

from rlpredict.atomic import atomic_output_file
from rlpredict.backends import train_gpus
from rlpredict.train.verl_backend import (
    format_value,
    launch_command,
    ray_num_cpus,
    reward_meaning,
)
from rlpredict.train.verl_run import (
    CONSOLE_LOG,
    check_saved,
    read_history,
    run_logged,
    write_done,
)
from rlpredict.workflow import run_script


def main(smk):
    verl_dir = Path(smk.params.verl_dir)
    config = smk.params.config
    # Ray counts the job's CPUs, not the node's (verl's advice under SLURM).
    cpus = ray_num_cpus(smk.threads, train_gpus(config), os.environ)
    command = launch_command(
        config,
        model_path=Path(smk.input.base).resolve(),
        train_files=smk.input.train,
        val_files=smk.input.get("val"),
        checkpoint_dir=verl_dir,
        python=sys.executable,
        ray_cpus=cpus,
    )
    # Hydra's own run files (resolved config, log) go next to the checkpoints, not into cwd.
    command.append(f"hydra.run.dir={format_value(str(verl_dir.resolve() / 'hydra'))}")
    code = run_logged(command, verl_dir / CONSOLE_LOG)
    if code != 0:
        raise RuntimeError(f"verl exited with code {code}; its output is in {smk.log[0]}")
    check_saved(verl_dir, smk.params.steps[1:])
    with atomic_output_file(smk.output.history) as tmp:
        meaning = reward_meaning(config["train"])
        read_history(verl_dir / CONSOLE_LOG, meaning).to_csv(tmp, index=False)
    write_done(verl_dir, smk.params.steps, command)


run_script(main, snakemake)  # noqa: F821
