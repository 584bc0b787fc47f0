# Periodic re-grounding (RL-Extra): per (M, N) chain, segment k trains M real RL steps from
# the previous segment's extrapolated model (the base for k = 1), then extrapolates N steps
# further (two-point, α = (M + N) / M). Every segment end and extrapolated model is
# evaluated; tables/regrounding.* compares them with standard RL against real RL steps.
# Chains are keyed by (M, N): models/regrounding/m{M}_n{N}/seg{k}/{end,extrap}. A finished
# segment is never trained again, so an interrupted chain resumes after its last finished
# segment (and inside a segment from TRL's newest checkpoint in regrounding_state/).
from rlpredict.regrounding import chain_real_steps
from rlpredict.workflow import regrounding_chains

REGROUNDING = config["regrounding"]
# Checked with the config when enabled; otherwise only `snakemake regrounding` needs them.
try:
    CHAINS = regrounding_chains(config)
    CHAINS_PROBLEM = None
except ValueError as err:
    CHAINS, CHAINS_PROBLEM = {}, f"config {err}"
KEEP_OPTIMIZER = REGROUNDING["optimizer"] == "keep"


wildcard_constraints:
    chain=r"m\d+_n\d+",
    seg=r"\d+",


def segment_of(wildcards):
    """The planned segment of ``{chain}``/``seg{seg}``; an unplanned one is an error."""
    chain = CHAINS.get(wildcards.chain)
    k = int(wildcards.seg)
    if chain is None or not 1 <= k <= len(chain):
        raise ValueError(
            f"regrounding: {wildcards.chain} segment {k} is not planned by "
            f"regrounding.pairs {REGROUNDING['pairs']}"
        )
    return chain[k - 1]


def segment_dir(chain, k, part):
    return f"{OUT}/models/regrounding/{chain}/seg{k}/{part}"


def segment_start(wildcards):
    """The model a segment trains from and extrapolates with as t0: the base for segment 1,
    else the previous segment's extrapolated model."""
    k = int(wildcards.seg)
    if k == 1:
        return rules.base_model.output.model
    return segment_dir(wildcards.chain, k - 1, "extrap")


def segment_train_inputs(wildcards):
    inputs = {
        "start": segment_start(wildcards),
        "train": rules.make_data.output.train,
    }
    if segment_of(wildcards).keeps_optimizer:
        previous = int(wildcards.seg) - 1
        inputs["optimizer"] = (
            f"{OUT}/regrounding_state/{wildcards.chain}/seg{previous}.optimizer.pt"
        )
    return inputs


rule regrounding_train:
    input:
        unpack(segment_train_inputs),
    output:
        **(
            {"optimizer": f"{OUT}/regrounding_state/{{chain}}/seg{{seg}}.optimizer.pt"}
            if KEEP_OPTIMIZER
            else {}
        ),
        model=directory(segment_dir("{chain}", "{seg}", "end")),
        history=f"{OUT}/analysis/regrounding/{{chain}}/seg{{seg}}_history.csv",
    log:
        f"{OUT}/logs/regrounding/{{chain}}/train_seg{{seg}}.log",
    benchmark:
        f"{OUT}/benchmarks/regrounding/{{chain}}/train_seg{{seg}}.tsv"
    conda:
        "../envs/cpu.yaml"
    threads: 1
    params:
        segment=segment_of,
        chain_steps=lambda wildcards: chain_real_steps(CHAINS[wildcards.chain]),
        train=config["train"],
        state_dir=lambda wildcards: f"{OUT}/regrounding_state/{wildcards.chain}/seg{wildcards.seg}",
        task_name=TASK_NAME,
        seed=config["seed"],
    script:
        "../scripts/regrounding_train.py"


rule regrounding_extrapolate:
    input:
        start=segment_start,
        end=segment_dir("{chain}", "{seg}", "end"),
    output:
        model=directory(segment_dir("{chain}", "{seg}", "extrap")),
    log:
        f"{OUT}/logs/regrounding/{{chain}}/extrapolate_seg{{seg}}.log",
    benchmark:
        f"{OUT}/benchmarks/regrounding/{{chain}}/extrapolate_seg{{seg}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        segment=segment_of,
    script:
        "../scripts/regrounding_extrapolate.py"


def chain_files(name):
    """Evaluations, histories and extrapolation benchmarks of every segment of a chain."""
    segments = range(1, len(CHAINS[name]) + 1)
    return {
        "ends": [eval_json(f"regrounding/{name}/seg{k}/end") for k in segments],
        "extrapolated": [
            eval_json(f"regrounding/{name}/seg{k}/extrap") for k in segments
        ],
        "histories": [
            f"{OUT}/analysis/regrounding/{name}/seg{k}_history.csv" for k in segments
        ],
        "benchmarks": [
            f"{OUT}/benchmarks/regrounding/{name}/extrapolate_seg{k}.tsv"
            for k in segments
        ],
    }


REGROUNDING_FILES = {name: chain_files(name) for name in CHAINS}


def regrounding_inputs(wildcards):
    """Every chain's files; the config's problem when its chains cannot be planned."""
    if CHAINS_PROBLEM:
        raise ValueError(CHAINS_PROBLEM)
    return [f for files in REGROUNDING_FILES.values() for f in sum(files.values(), [])]


rule regrounding_table:
    input:
        standard=[eval_json(f"step_{step}") for step in STEPS],
        history=rules.train_rl.output.history,
        chains=regrounding_inputs,
    output:
        csv=f"{OUT}/tables/regrounding.csv",
        md=f"{OUT}/tables/regrounding.md",
    log:
        f"{OUT}/logs/regrounding_table.log",
    benchmark:
        f"{OUT}/benchmarks/regrounding_table.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        steps=STEPS,
        chains=CHAINS,
        files=REGROUNDING_FILES,
        targets=REGROUNDING["targets"],
    script:
        "../scripts/regrounding_table.py"


rule regrounding_figure:
    input:
        table=rules.regrounding_table.output.csv,
    output:
        png=report(
            f"{OUT}/figures/regrounding.png",
            caption="../report/regrounding_figure.rst",
            category="Re-grounding",
        ),
        pdf=f"{OUT}/figures/regrounding.pdf",
        table_html=report(
            f"{OUT}/tables/regrounding.html",
            caption="../report/regrounding_table.rst",
            category="Re-grounding",
        ),
    log:
        f"{OUT}/logs/regrounding_figure.log",
    benchmark:
        f"{OUT}/benchmarks/regrounding_figure.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        run=RUN,
    script:
        "../scripts/regrounding_figure.py"


rule regrounding:
    input:
        rules.regrounding_table.output.csv,
        rules.regrounding_table.output.md,
        rules.regrounding_figure.output.png,
        rules.regrounding_figure.output.table_html,
