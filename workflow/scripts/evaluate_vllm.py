import _rlpredict  # noqa: F401

from rlpredict.evaluate_vllm import evaluate_model
from rlpredict.workflow import run_script


def main(smk):
    arithmetic = None
    if smk.input.get("data"):  # the generated task is one of eval.tasks: the job's split
        arithmetic = (list(smk.input.arithmetic), smk.input.data)
    evaluate_model(
        model_dir=smk.input.model,
        eval_config=smk.params.settings,
        out_json=smk.output[0],
        model_id=smk.wildcards.model_id,
        arithmetic=arithmetic,
        dev_file=smk.input.get("dev") or None,  # the math tasks' dev problems (dev split)
    )


run_script(main, snakemake)  # noqa: F821
