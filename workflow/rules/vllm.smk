# Evaluation with lm-eval's vLLM backend on GPUs (eval.backend vllm). Every model dir
# (checkpoints, ablations, extrapolations) gets the same fixed-name JSON as with the hf
# backend; its "accuracy" is the unweighted mean over eval.tasks, each task's is kept too.
from rlpredict.backends import ARITHMETIC_TASK, eval_gpus, math_task_files

EVAL = config["eval"]
EVAL_RESOURCES = EVAL["resources"]
EVAL_INPUTS = {
    "tasks": [
        str(Path(workflow.basedir) / f)
        for f in math_task_files(EVAL["tasks"], workflow.basedir)
    ]
}
if ARITHMETIC_TASK in EVAL["tasks"]:
    EVAL_INPUTS["arithmetic"] = TASK_FILES
    EVAL_INPUTS["data"] = rules.make_data.output.test


rule evaluate:
    input:
        **EVAL_INPUTS,
        model=model_dir,
    output:
        f"{OUT}/eval/{{model_id}}.json",
    log:
        f"{OUT}/logs/evaluate/{{model_id}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{model_id}}.tsv"
    conda:
        "../../envs/vllm-eval.yaml"
    threads: eval_gpus(config) * EVAL_RESOURCES["cpus_per_gpu"]
    resources:
        gpu=eval_gpus(config),
        gpu_model=EVAL_RESOURCES["gpu_model"],
        mem_mb=EVAL_RESOURCES["mem_mb"],
        runtime=EVAL_RESOURCES["runtime"],
        cpus_per_gpu=EVAL_RESOURCES["cpus_per_gpu"],
    params:
        settings=EVAL,
    script:
        "../scripts/evaluate_vllm.py"
