import logging

import _rlpredict  # noqa: F401

from rlpredict.train.verl_run import import_checkpoint
from rlpredict.workflow import run_script


def main(smk):
    source, kind = smk.params.source, smk.params.kind
    logging.getLogger("rlpredict").info("%s checkpoint %s -> %s", kind, source, smk.output[0])
    import_checkpoint(source, smk.output[0], kind=kind)


run_script(main, snakemake)  # noqa: F821
