import logging

import _rlpredict  # noqa: F401

from rlpredict.atomic import atomic_output_file
from rlpredict.train.verl_run import existing_history
from rlpredict.workflow import run_script


def main(smk):
    existing = smk.params.existing
    logging.getLogger("rlpredict").info(
        "train.backend existing: no training; steps %s of %s",
        smk.params.steps,
        existing["verl_dir"] or existing["checkpoints_dir"],
    )
    with atomic_output_file(smk.output.history) as tmp:
        existing_history(existing).to_csv(tmp, index=False)


run_script(main, snakemake)  # noqa: F821
