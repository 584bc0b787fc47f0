rule base_model:
    input:
        train=rules.make_data.output.train,
        dev=rules.make_data.output.dev,
    output:
        model=directory(f"{OUT}/base"),
        history=f"{OUT}/analysis/warmup_history.csv",
    log:
        f"{OUT}/logs/base_model.log",
    benchmark:
        f"{OUT}/benchmarks/base_model.tsv"
    conda:
        "../envs/cpu.yaml"
    threads: 1
    params:
        model=config["model"],
        warmup=config["base"]["warmup"],
        digits=config["task"]["digits"],
        seed=config["seed"],
    script:
        "../scripts/base_model.py"
