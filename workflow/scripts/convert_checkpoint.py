import _rlpredict  # noqa: F401

from rlpredict.train.verl_run import import_checkpoint
from rlpredict.workflow import run_script


def main(smk):
    import_checkpoint(smk.params.source, smk.output[0], kind=smk.params.kind)


run_script(main, snakemake)  # noqa: F821
