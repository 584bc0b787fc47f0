# RLVR training. TRL keeps its resumable state in train_state/ (not an output, so an
# interrupted run resumes); model-only fp32 dirs are exported to checkpoints/step_{N}.
rule train_rl:
    input:
        base=rules.base_model.output.model,
        train=rules.make_data.output.train,
    output:
        checkpoints=[directory(f"{OUT}/checkpoints/step_{step}") for step in STEPS],
        history=f"{OUT}/analysis/train_history.csv",
    log:
        f"{OUT}/logs/train_rl.log",
    benchmark:
        f"{OUT}/benchmarks/train_rl.tsv"
    conda:
        "../envs/cpu.yaml"
    threads: 1
    params:
        train=config["train"],
        steps=STEPS,
        state_dir=f"{OUT}/train_state",
        task_name=config["task"]["name"],
        seed=config["seed"],
    script:
        "../scripts/train_rl.py"
