import _rlpredict  # noqa: F401

from rlpredict.evaluate_vllm import make_dev_split
from rlpredict.workflow import run_script


def main(smk):
    make_dev_split(
        smk.input.get("source") or smk.params.source,  # a hub dataset is not an input file
        smk.output[0],
        prompt_format=smk.params.prompt_format,
        test_files=list(smk.input.tests),
        size=smk.params.size,
        seed=smk.params.seed,
    )


run_script(main, snakemake)  # noqa: F821
