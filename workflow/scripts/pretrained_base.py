import _rlpredict  # noqa: F401

from rlpredict.backends import fetch_base_model
from rlpredict.workflow import run_script


def main(smk):
    fetch_base_model(smk.params.model, smk.output.model)


run_script(main, snakemake)  # noqa: F821
