import _rlpredict  # noqa: F401
import torch

import rlpredict.logits  # noqa: F401 - registers the lm-eval model
from rlpredict.checkpoints import ModelReader
from rlpredict.evaluate import evaluate_model
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    early, late = smk.input.checkpoints
    for path in (early, late):
        ModelReader(path).close()
    job, settings = smk.params.job, smk.params.settings
    model_args = (
        f"pretrained0={early},pretrained1={late},alpha={job.alpha},dtype={settings['dtype']},"
        f"max_gen_toks={smk.params.max_gen_toks},seed={smk.params.seed}"
    )
    evaluate_model(
        model_dir=late,
        task_files=smk.input.task,
        data_file=smk.input.data,
        task_name="arithmetic",
        out_json=smk.output[0],
        settings={**settings, "max_gen_toks": smk.params.max_gen_toks},
        model_id=job.model_id,
        seed=smk.params.seed,
        model="rlpredict-logit-extrap",
        model_args=model_args,
    )


run_script(main, snakemake)  # noqa: F821
