from rlpredict.tasks.registry import eval_max_tokens


rule evaluate:
    input:
        model=model_dir,
        data=rules.make_data.output.test,
        task=TASK_FILES,
    output:
        f"{OUT}/eval/{{model_id}}.json",
    log:
        f"{OUT}/logs/evaluate/{{model_id}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{model_id}}.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    params:
        settings=config["eval"],
        task_name=TASK_NAME,
        max_gen_toks=eval_max_tokens(config["task"]),
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
