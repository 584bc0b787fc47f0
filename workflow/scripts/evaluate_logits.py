import _rlpredict  # noqa: F401
import torch

from rlpredict.checkpoints import ModelReader
from rlpredict.lm_eval_models import LogitExtrapolationLM
from rlpredict.workflow import run_script


def main(smk):
    torch.set_num_threads(smk.threads)
    early, late = smk.input.checkpoints
    for path in (early, late):
        ModelReader(path).close()
    job, settings, params = smk.params.job, smk.params.settings, smk.params
    if settings["backend"] == "vllm":
        evaluate_on_gpu(smk, early, late)
        return
    from rlpredict.evaluate import evaluate_model

    model_args = (
        f"pretrained0={early},pretrained1={late},alpha={job.alpha},dtype={settings['dtype']},"
        f"max_gen_toks={params.max_gen_toks},seed={params.seed}"
    )
    evaluate_model(
        model_dir=late,
        task_files=smk.input.task,
        data_file=smk.input.data,
        task_name=params.task_name,
        out_json=smk.output[0],
        settings={**settings, "max_gen_toks": params.max_gen_toks, "device": params.device},
        model_id=job.model_id,
        seed=params.seed,
        model="rlpredict-logit-extrap",
        model_args=model_args,
    )


def evaluate_on_gpu(smk, early, late):
    """The vllm backend's tasks and sampling, with the two-model HF backend on the GPU."""
    from rlpredict.evaluate_vllm import evaluate_model, vllm_settings

    job, settings, params = smk.params.job, smk.params.settings, smk.params
    vllm = vllm_settings(settings)
    lm = LogitExtrapolationLM(
        pretrained0=early,
        pretrained1=late,
        alpha=job.alpha,
        dtype=vllm["dtype"],
        device=params.device,
        max_length=vllm["max_model_len"],
        max_gen_toks=params.max_gen_toks,
        batch_size=8,
        seed=params.seed,
    )
    arithmetic = None
    if smk.input.get("data"):  # the generated task is one of eval.tasks
        arithmetic = (list(smk.input.arithmetic), smk.input.data)
    evaluate_model(
        model_dir=late,
        eval_config=settings,
        out_json=smk.output[0],
        model_id=job.model_id,
        arithmetic=arithmetic,
        lm=lm,
    )


run_script(main, snakemake)  # noqa: F821
