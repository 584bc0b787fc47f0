rule make_data:
    output:
        train=f"{OUT}/data/train.jsonl",
        dev=f"{OUT}/data/dev.jsonl",
        test=f"{OUT}/data/test.jsonl",
    params:
        task=config["task"],
        seed=config["seed"],
    log:
        f"{OUT}/logs/make_data.log",
    benchmark:
        f"{OUT}/benchmarks/make_data.tsv"
    script:
        "../scripts/make_data.py"
