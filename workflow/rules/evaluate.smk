# Evaluation with lm-eval's HF backend on the CPU (eval.backend hf), on either split: the test
# split (eval/{model_id}.json, the accuracy every table reports) or the dev split
# (eval_dev/{model_id}.json: AlphaRL's accuracy labels, rank-1 PLS linearity and the log-prob
# probes). The split wildcard is the suffix of those dirs (common.smk).
from rlpredict.tasks.registry import eval_max_tokens


rule evaluate:
    input:
        model=model_dir,
        data=lambda wildcards: getattr(rules.make_data.output, eval_split(wildcards)),
        task=TASK_FILES,
    output:
        f"{OUT}/eval{{split}}/{{model_id}}.json",
    log:
        f"{OUT}/logs/evaluate{{split}}/{{model_id}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate{{split}}/{{model_id}}.tsv"
    conda:
        "../envs/cpu.yaml"
    threads: 1
    params:
        settings=config["eval"],
        task_name=TASK_NAME,
        max_gen_toks=eval_max_tokens(config["task"]),
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
