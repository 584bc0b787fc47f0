# The supervised control run (RL vs SFT contrast): same base, same steps, same checkpoints.
rule train_sft_control:
    input:
        base=rules.base_model.output.model,
        train=rules.make_data.output.train,
    output:
        checkpoints=[directory(f"{OUT}/models/sft/step_{step}") for step in STEPS[1:]],
        history=f"{OUT}/analysis/sft_history.csv",
    log:
        f"{OUT}/logs/train_sft_control.log",
    benchmark:
        f"{OUT}/benchmarks/train_sft_control.tsv"
    conda:
        "../envs/cpu.yaml"
    threads: 1
    params:
        settings=config["control"]["sft"],
        steps=STEPS[1:],
        task_name=config["task"]["name"],
        seed=config["seed"],
    script:
        "../scripts/train_sft_control.py"
