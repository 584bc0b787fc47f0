import logging

import _rlpredict  # noqa: F401

from rlpredict.backends import fetch_base_model
from rlpredict.workflow import run_script


def main(smk):
    model = smk.params.model
    source = smk.input.get("source", model["path"])
    logging.getLogger("rlpredict").info(
        "base model: %s %s -> %s (fp32)", model["source"], source, smk.output.model
    )
    fetch_base_model(model, smk.output.model)


run_script(main, snakemake)  # noqa: F821
