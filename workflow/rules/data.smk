rule make_data:
    output:
        train=f"{OUT}/data/train.jsonl",
        dev=f"{OUT}/data/dev.jsonl",
        test=f"{OUT}/data/test.jsonl",
    log:
        f"{OUT}/logs/make_data.log",
    benchmark:
        f"{OUT}/benchmarks/make_data.tsv"
    conda:
        "../envs/cpu.yaml"
    params:
        task=config["task"],
        seed=config["seed"],
    script:
        "../scripts/make_data.py"
