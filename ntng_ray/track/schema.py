"""The tracking contract in one place: every MLflow tag, the metric names the report reads, and
the keys of the results trials report to Ray Tune / Ray Train.

Stored runs and the report depend on these exact strings; change a value only together with a
migration of the stores that hold it. Plain constants, no imports: any layer may read them.
"""

from __future__ import annotations

# --- MLflow's own tags -------------------------------------------------------------------------

MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_USER = "mlflow.user"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
# An experiment tag: MLflow 3 opens an experiment without it on the GenAI pages; a training
# experiment opens on the runs table.
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# The input tag MLflow reads a dataset's role from, and the role of a run's corpus.
MLFLOW_DATASET_CONTEXT = "mlflow.data.context"
DATASET_CONTEXT_TRAINING = "training"

# --- ntng tags: every run ---------------------------------------------------------------------

TAG_MODEL = "ntng.model"
TAG_STRATEGY = "ntng.strategy"
TAG_BUDGET = "ntng.budget_rst_seconds"
TAG_SEED = "ntng.seed"
TAG_RST_TABLE = "ntng.rst_table"
TAG_RST_TABLE_SHA256 = "ntng.rst_table_sha256"
TAG_GIT_COMMIT = "ntng.git_commit"
TAG_HARDWARE = "ntng.hardware"
TAG_VERSION_PREFIX = "ntng.version."

# --- ntng tags: a sweep's parent run ----------------------------------------------------------

TAG_SWEEP = "ntng.sweep"
TAG_ROLE = "ntng.role"
ROLE_SWEEP = "sweep"  # the value of TAG_ROLE on a parent run
TAG_PROTOCOL_SEARCHER = "ntng.protocol.searcher"
TAG_PROTOCOL_TRIALS = "ntng.protocol.trials"
TAG_PROTOCOL_TRIALS_BY_STRATEGY = "ntng.protocol.trials_by_strategy"
TAG_PROTOCOL_SEEDS = "ntng.protocol.seeds"
TAG_PROTOCOL_ALLOW_UNEQUAL_TUNING = "ntng.protocol.allow_unequal_tuning"
TAG_PROTOCOL_SCHEDULER = "ntng.protocol.scheduler"
TAG_PROTOCOL_SPLIT_SEED = "ntng.protocol.split_seed"
TAG_BUDGETS = "ntng.budgets_rst_seconds"  # JSON list of the sweep's budgets
TAG_STRATEGIES = "ntng.strategies"  # JSON list, baseline first
TAG_SWEEP_SHA256 = "ntng.sweep_sha256"

# --- ntng tags: a sweep's child runs ----------------------------------------------------------

TAG_PHASE = "ntng.phase"
PHASE_TUNE = "tune"
PHASE_FINAL = "final"
PHASE_FINETUNE = "finetune"
PHASE_DOWNSTREAM = "downstream"
PHASE_PREPARE = "prepare"  # a strategy's preparation run (e.g. RHO-loss's IL model)
TAG_STAGE = "ntng.stage"
TAG_TRIAL_ID = "ntng.trial_id"
TAG_LAUNCH = "ntng.launch"
TAG_OUTCOME = "ntng.outcome"
TAG_SELECTED = "ntng.selected"  # "true" on the tuning trial a strategy's finals re-run
TAG_TASK = "ntng.task"
TAG_SUITE = "ntng.suite"
TAG_PRETRAIN_RUN_ID = "ntng.pretrain_run_id"
TAG_AVERAGED_TASKS = "ntng.averaged_tasks"

# How a trial ended (TAG_OUTCOME), and the run's end status for each.
OUTCOME_COMPLETED = "completed"
OUTCOME_DIVERGED = "diverged"
OUTCOME_OVER_BUDGET = "over_budget"
OUTCOME_FAILED = "failed"
OUTCOME_INTERRUPTED = "interrupted"
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
END_STATUSES = (FINISHED, FAILED, KILLED)
OUTCOME_STATUS = {
    OUTCOME_COMPLETED: FINISHED,
    OUTCOME_DIVERGED: FAILED,
    OUTCOME_OVER_BUDGET: FAILED,
    OUTCOME_FAILED: FAILED,
    OUTCOME_INTERRUPTED: KILLED,
}

# --- MLflow metrics ---------------------------------------------------------------------------
# Every metric of a training run is logged at MLflow step = the RST spent when it was measured,
# in whole milliseconds (``rst_step``), so the UI's default "Step" axis is RST; the optimizer
# step is a metric of its own (METRIC_OPTIMIZER_STEP). Config values are params, never metrics.

METRIC_TRAIN_LOSS = "train_loss"
METRIC_VAL_LOSS = "val_loss"
METRIC_TRAIN_EVAL_LOSS = "train_eval_loss"
METRIC_VAL_PROGRESS_POINT = "val_progress_point"
METRIC_RST_SECONDS = "rst_seconds"
METRIC_RST_PROGRESS = "rst_progress"
METRIC_WALL_SECONDS = "wall_seconds"
METRIC_FINAL_VALIDATION_LOSS = "final_validation_loss"
METRIC_FINAL_TRAIN_EVAL_LOSS = "final_train_eval_loss"
METRIC_OPTIMIZER_STEP = "optimizer_step"
# A run's optimizer steps: the latest value of METRIC_OPTIMIZER_STEP (one name per figure).
METRIC_STEPS = METRIC_OPTIMIZER_STEP
METRIC_TOKENS_PER_S = "tokens_per_s"
METRIC_COMPILE_SECONDS = "compile_seconds"  # torch.compile warm-up; never charged to RST
# RST a strategy's preparation spent before the run (0 for strategies without one).
METRIC_PREPARATION_RST_SECONDS = "preparation_rst_seconds"
# The training data's figures (summary "data" section), logged once at the run's last RST step:
# the labelled tokens' unigram entropy, the best loss without context, the training tokens.
METRIC_DATA_UNIGRAM_ENTROPY = "data.unigram_entropy_nats"
METRIC_DATA_CONTEXT_FREE_BOUND = "data.context_free_bound_nats"
METRIC_DATA_TRAIN_TOKENS = "data.train_tokens"
# A strategy's summary figures that are measurements, logged as metrics under these names (its
# per-record figures keep their own names too); every other summary field is a param
# ``strategy.<field>`` (a setting, or a value derived from settings).
STRATEGY_SUMMARY_METRICS = frozenset(
    {
        "mean_active_layers",
        "final_layers",
        "selection_ratio",
        "scored_examples",
        "kept_examples",
        "capped_microbatches",
        "filled_examples",
        "hessian_passes",
        "hessian_rst_seconds",
        "il_model_rst_seconds",
        "il_scoring_rst_seconds",
        "il_model_final_validation_loss",
    }
)
# Strategy figures that are another metric under a second name: not logged again.
STRATEGY_FIGURE_ALIASES = {"rho_il_rst_seconds": METRIC_PREPARATION_RST_SECONDS}
# On a sweep's parent run.
METRIC_SWEEP_RST_SECONDS = "sweep_rst_seconds"
METRIC_SWEEP_PREPARATION_RST_SECONDS = "preparation_rst_seconds"
# On downstream runs: a fine-tuning trial's score, a suite's average over its tasks.
METRIC_SCORE = "score"


def rst_step(rst_seconds: float) -> int:
    """The MLflow step of a figure measured after ``rst_seconds`` of RST: whole milliseconds."""
    return round(float(rst_seconds) * 1000)


def suite_average_metric(suite: str) -> str:
    """The metric a downstream run holds a suite's average in, e.g. ``glue_average``."""
    return f"{suite}_average"


def suite_task_metric(suite: str, task: str) -> str:
    return f"{suite}_{task}"


# --- results reported to Ray Tune / Ray Train -------------------------------------------------

RESULT_RST_SECONDS = "rst_seconds"
RESULT_RST_PROGRESS = "rst_progress"
RESULT_BUDGET = "budget_rst_seconds"
RESULT_STEP = "step"
RESULT_VAL_LOSS = "val_loss"  # the searcher's metric; NaN once a run diverged
RESULT_TRAIN_LOSS = "train_loss"
RESULT_TRAIN_EVAL_LOSS = "train_eval_loss"
RESULT_PROGRESS_POINT = "progress_point"
RESULT_FINAL = "final"  # 1 on a trial's last result, after its run completed
RESULT_FINAL_VALIDATION_LOSS = "final_validation_loss"
RESULT_FINAL_TRAIN_EVAL_LOSS = "final_train_eval_loss"
RESULT_STEPS = "steps"
RESULT_LOOP_WALL_SECONDS = "loop_wall_seconds"
RESULT_PREPARATION_RST_SECONDS = "preparation_rst_seconds"
RESULT_TRIAL_WALL_SECONDS = "trial_wall_seconds"
RESULT_TRIAL_ID = "trial_id"  # added by Tune itself
RESULT_SCORE = "score"
RESULT_N_EVAL = "n_eval"

# --- the report's answer on a sweep's parent run ----------------------------------------------

# MLflow shows this tag as the run's description (Markdown): the report's summary table.
MLFLOW_NOTE_CONTENT = "mlflow.note.content"
# Per strategy and budget (``budget`` as ``plan.budget_label`` writes it, e.g. 12 or 2.5):
# method - baseline mean final validation loss, and the report's verdict on it.
METRIC_DELTA_VAL_LOSS_TEMPLATE = "delta_val_loss.{strategy}.b{budget}"
TAG_VERDICT_TEMPLATE = "ntng.verdict.{strategy}.b{budget}"
# Final runs' latest training-token count (logged with each train event).
METRIC_TOKENS = "tokens"
# The sweep file, logged on the parent run as an artifact (its strategies' search spaces).
ARTIFACT_SWEEP_FILE = "sweep.yaml"
