# Paths, step lists and input functions shared by every rule.
import sys
from argparse import Namespace

# The project root: the main workflow (workflow/Snakefile) and the sweep (workflow/sweep.smk)
# both live one level below it.
PROJECT_ROOT = Path(workflow.basedir).parent
sys.path.insert(0, str(PROJECT_ROOT / "src"))

from rlpredict.plan import plan_jobs, runnable
from rlpredict.workflow import (
    ConfigError,
    check_workflow_config,
    rank_argument,
    rank_tokens,
)

# Schema (with its defaults), backend combinations and meaning, before any job is planned:
# one line per problem, naming the key and the config file.
CONFIG_FILES = [
    f for f in workflow.configfiles if f not in workflow.overwrite_configfiles
]
try:
    STEPS = check_workflow_config(
        config,
        PROJECT_ROOT,
        [*CONFIG_FILES, *workflow.overwrite_configfiles],
        schema=workflow.source_path("../schemas/config.schema.yaml"),
    )
except ConfigError as err:
    sys.exit(str(err))
RUN = config["run"]
OUT = f"results/{RUN}"
SOURCES = ["rl", "sft"] if config["control"]["sft"]["enabled"] else ["rl"]
PLANNED_JOBS = (
    plan_jobs(STEPS, config["extrapolate"]) if config["extrapolate"]["enabled"] else []
)
EXTRAP_JOBS = runnable(PLANNED_JOBS)
TASK_NAME = config["task"]["name"]
TASK_FILES = [
    workflow.source_path(f"../tasks/{TASK_NAME}/{TASK_NAME}.yaml"),
    workflow.source_path(f"../tasks/{TASK_NAME}/utils.py"),
]
RANKS = rank_tokens(config["ablate"]["ranks"], config["ablate"]["rank_percents"])


# split: the evaluation split as the suffix of its dirs, empty for test (eval/, logs/evaluate/)
# and _dev for dev (eval_dev/, logs/evaluate_dev/); see eval_split.
wildcard_constraints:
    step=r"\d+",
    model_id=r"[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*",
    split=r"(_dev)?",


def model_dir(wildcards):
    """``step_N`` is an RL checkpoint; any other model id names a dir under models/."""
    if wildcards.model_id.startswith("step_"):
        return f"{OUT}/checkpoints/{wildcards.model_id}"
    return f"{OUT}/models/{wildcards.model_id}"


def eval_split(wildcards):
    """The data split an evaluation job scores: ``test`` (eval/) or ``dev`` (eval_dev/)."""
    return "dev" if wildcards.split == "_dev" else "test"


def trained_id(source, step):
    """Model id of checkpoint ``step`` of the RL run or of the SFT control."""
    return f"step_{step}" if source == "rl" else f"sft/step_{step}"


def final_model_id(source):
    return trained_id(source, STEPS[-1])


def trained_dir(wildcards):
    return model_dir(Namespace(model_id=trained_id(wildcards.source, wildcards.step)))


def final_trained_dir(wildcards):
    return model_dir(Namespace(model_id=final_model_id(wildcards.source)))


def job_of(model_id):
    return next(job for job in EXTRAP_JOBS if job.model_id == model_id)


def job_inputs(wildcards):
    """Checkpoints an extrapolation job reads; AlphaRL also needs their dev accuracies."""
    if "method" in wildcards.keys():
        job = job_of(f"extrap/{wildcards.method}/w{wildcards.window}")
    elif "target" in wildcards.keys():
        job = job_of(f"extrap/alpharl-{wildcards.target}/w{wildcards.window}")
    else:
        job = job_of(f"logits/w{wildcards.window}")
    inputs = {"checkpoints": [f"{OUT}/checkpoints/step_{step}" for step in job.steps]}
    if job.needs_dev_labels:
        inputs["dev"] = [f"{OUT}/eval_dev/step_{step}.json" for step in job.steps]
        inputs["final_dev"] = f"{OUT}/eval_dev/step_{STEPS[-1]}.json"
    return inputs


def job_cost_benchmarks(job):
    """Benchmark files of the extra work a method needs beyond training to the window."""
    if not job.writes_model:
        return []
    files = [f"{OUT}/benchmarks/extrapolate/{job.method}_w{job.window}.tsv"]
    if job.needs_dev_labels:
        files += [f"{OUT}/benchmarks/evaluate_dev/step_{s}.tsv" for s in job.steps if s]
    return files


def generated_model(path):
    """Output dir of a model made only to be evaluated (ablated, extrapolated): deleted once
    its evaluation is done unless ``keep_generated_models`` is set."""
    if config["keep_generated_models"]:
        return directory(path)
    return temp(directory(path))


def eval_json(model_id):
    return f"{OUT}/eval/{model_id}.json"


def all_outputs():
    outputs = [
        f"{OUT}/tables/accuracy_vs_step.csv",
        f"{OUT}/tables/accuracy_vs_step.md",
        f"{OUT}/figures/accuracy_vs_step.png",
        f"{OUT}/figures/accuracy_vs_step.pdf",
        f"{OUT}/tables/accuracy_vs_step.html",
    ]
    if config["ablate"]["enabled"]:
        outputs += [
            f"{OUT}/tables/rank_ablation.csv",
            f"{OUT}/tables/rank_ablation.md",
            f"{OUT}/figures/rank_ablation.png",
            f"{OUT}/figures/rank1_energy_share.png",
            f"{OUT}/tables/rank_ablation.html",
        ]
    if EXTRAP_JOBS:
        outputs += [
            f"{OUT}/tables/speedup_vs_accuracy.csv",
            f"{OUT}/tables/speedup_vs_accuracy.md",
            f"{OUT}/figures/predictions_vs_step.png",
            f"{OUT}/figures/speedup_vs_accuracy.png",
            f"{OUT}/tables/speedup_vs_accuracy.html",
        ]
    if config["linearity"]["enabled"]:
        outputs += [
            f"{OUT}/tables/linearity.csv",
            f"{OUT}/figures/linearity.png",
            f"{OUT}/tables/linearity.html",
        ]
    if config["regrounding"]["enabled"]:
        outputs += [
            f"{OUT}/tables/regrounding.csv",
            f"{OUT}/tables/regrounding.md",
            f"{OUT}/figures/regrounding.png",
            f"{OUT}/tables/regrounding.html",
        ]
    outputs += [
        f"{OUT}/tables/claims.csv",
        f"{OUT}/tables/claims.md",
        f"{OUT}/tables/claims.html",
    ]
    return outputs


# Periodic re-grounding (rules/regrounding.smk: CHAINS, CHAINS_PROBLEM, REGROUNDING_FILES)


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


def chain_files(name):
    """Evaluations, histories, extrapolation and evaluation benchmarks of every segment of a
    chain."""
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
        "end_eval_benchmarks": [
            f"{OUT}/benchmarks/evaluate/regrounding/{name}/seg{k}/end.tsv"
            for k in segments
        ],
        "extrap_eval_benchmarks": [
            f"{OUT}/benchmarks/evaluate/regrounding/{name}/seg{k}/extrap.tsv"
            for k in segments
        ],
    }


def regrounding_inputs(wildcards):
    """Every chain's files. When the chains cannot be planned the workflow stops with the
    config's problem in one line (SystemExit, as for every config problem: not wrapped as
    an input function's exception with its traceback)."""
    if CHAINS_PROBLEM:
        files = [*CONFIG_FILES, *workflow.overwrite_configfiles]
        sys.exit(f"{CHAINS_PROBLEM} ({', '.join(map(str, files))})")
    return [f for files in REGROUNDING_FILES.values() for f in sum(files.values(), [])]
