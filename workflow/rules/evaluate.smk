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
        max_gen_toks=config["task"]["digits"] + 3,
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
