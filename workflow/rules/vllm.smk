# Evaluation with lm-eval's vLLM backend on GPUs (eval.backend vllm). Every model dir
# (checkpoints, ablations, extrapolations) gets the same fixed-name JSON as with the hf
# backend; its "accuracy" is the unweighted mean over eval.tasks, each task's is kept too.
from rlpredict.backends import (
    ARITHMETIC_TASK,
    GENERATED,
    data_format,
    eval_gpus,
    math_task_files,
)

EVAL = config["eval"]
EVAL_RESOURCES = EVAL["resources"]
EVAL_INPUTS = {
    "tasks": [
        str(PROJECT_ROOT / f) for f in math_task_files(EVAL["tasks"], PROJECT_ROOT)
    ]
}
if ARITHMETIC_TASK in EVAL["tasks"]:
    EVAL_INPUTS["arithmetic"] = TASK_FILES
    EVAL_INPUTS["data"] = rules.make_data.output.test


# The dev split: AlphaRL's accuracy labels, rank-1 PLS linearity and the log-prob probes.
# The math tasks' dev problems are a seeded sample of task.dev_size problems from data.val
# (or, when it is null, data.train), without any problem of the math tasks' test files; the
# arithmetic task uses its generated dev split. Each checkpoint is scored on them with the
# run's vLLM settings (eval_dev/{model_id}.json, as with the hf backend).
EVAL_DEV_INPUTS = {}
if ARITHMETIC_TASK in EVAL["tasks"]:
    EVAL_DEV_INPUTS["arithmetic"] = TASK_FILES
    EVAL_DEV_INPUTS["data"] = rules.make_data.output.dev
if any(task != ARITHMETIC_TASK for task in EVAL["tasks"]):
    DEV_SPLIT = "val" if config["data"]["val"] else "train"
    DEV_SOURCE = config["data"][DEV_SPLIT]
    TEST_DATA = [
        str(PROJECT_ROOT / f)
        for f in math_task_files(EVAL["tasks"], PROJECT_ROOT)
        if f.endswith((".jsonl", ".json", ".parquet"))
    ]
    EVAL_DEV_INPUTS["dev"] = f"{OUT}/data/dev_math.jsonl"

    rule make_dev_split:
        input:
            **(
                {}
                if DEV_SOURCE.startswith("hub:") or DEV_SOURCE == GENERATED
                else {"source": DEV_SOURCE}
            ),
            tests=TEST_DATA,
        output:
            EVAL_DEV_INPUTS["dev"],
        log:
            f"{OUT}/logs/make_dev_split.log",
        benchmark:
            f"{OUT}/benchmarks/make_dev_split.tsv"
        conda:
            "../envs/vllm-eval.yaml"
        params:
            source=DEV_SOURCE,
            prompt_format=data_format(config["data"], DEV_SPLIT),
            size=config["task"]["dev_size"],
            seed=config["seed"],
        script:
            "../scripts/make_dev_split.py"


# Either split, like the hf backend's evaluate: eval/{model_id}.json on the test split,
# eval_dev/{model_id}.json on the dev split (the split wildcard is the dirs' suffix).
rule evaluate:
    input:
        # the task files and data of the split the job scores (common.eval_split)
        unpack(
            lambda wildcards: (
                EVAL_DEV_INPUTS if eval_split(wildcards) == "dev" else EVAL_INPUTS
            )
        ),
        model=model_dir,
    output:
        f"{OUT}/eval{{split}}/{{model_id}}.json",
    log:
        f"{OUT}/logs/evaluate{{split}}/{{model_id}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate{{split}}/{{model_id}}.tsv"
    conda:
        "../envs/vllm-eval.yaml"
    threads: eval_gpus(config) * EVAL_RESOURCES["cpus_per_gpu"]
    resources:
        # one node: without it SLURM may spread the GPUs over nodes
        nodes=1,
        gpu=eval_gpus(config),
        gpu_model=EVAL_RESOURCES["gpu_model"],
        mem_mb=EVAL_RESOURCES["mem_mb"],
        runtime=EVAL_RESOURCES["runtime"],
        cpus_per_gpu=EVAL_RESOURCES["cpus_per_gpu"],
    params:
        settings=EVAL,
    script:
        "../scripts/evaluate_vllm.py"
