rule evaluate:
    input:
        model=model_dir,
        test=rules.make_data.output.test,
        task=workflow.source_path("../tasks/arithmetic/arithmetic.yaml"),
    output:
        f"{OUT}/eval/{{model_id}}.json",
    params:
        settings=config["eval"],
        max_gen_toks=config["task"]["digits"] + 3,
        seed=config["seed"],
    threads: 1
    log:
        f"{OUT}/logs/evaluate/{{model_id}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{model_id}}.tsv"
    script:
        "../scripts/evaluate.py"
