import _rlpredict  # noqa: F401
import torch

from rlpredict.evaluate import evaluate_model
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    evaluate_model(
        model_dir=smk.input.model,
        task_files=smk.input.task,
        data_file=smk.input.data,
        task_name=smk.params.task_name,
        out_json=smk.output[0],
        settings={**smk.params.settings, "max_gen_toks": smk.params.max_gen_toks},
        model_id=smk.wildcards.model_id,
        seed=smk.params.seed,
    )


run_script(main, snakemake)  # noqa: F821
