"""The ``ntng`` command. Heavy imports (torch, transformers) happen inside the subcommands,
so ``ntng --help`` and config errors answer at once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ntng_ray.errors import NtngError

OVERRIDES_HELP = "settings as dotted key=value pairs, e.g. budget.rst_seconds=30 output_dir=runs/a"


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from ntng_ray.config import load_config

    cfg = load_config(args.config, args.overrides)
    from ntng_ray.train.run import pretrain

    summary = pretrain(cfg, reporters=[_print_progress])
    final = summary["validation"][-1]
    print(
        f"done: {summary['steps']} steps, {summary['rst_seconds']:.2f} / "
        f"{summary['budget_rst_seconds']:.2f} RST s, wall {summary['wall_seconds']:.1f} s, "
        f"validation loss {summary['validation'][0]['loss']:.4f} -> {final['loss']:.4f}"
    )
    return 0


def _print_progress(record: dict) -> None:
    if record["event"] == "validation":
        detail = f"val {record['loss']:.4f} train-eval {record['train_eval_loss']:.4f}"
    else:
        detail = (
            f"loss {record['loss']:.4f} lr {record['lr']:.2e} {record['tokens_per_s']:.0f} tok/s"
        )
    print(
        f"[{record['event']:>10}] step {record['step']:>5}  "
        f"RST {100 * record['rst_progress']:5.1f}%  {detail}",
        flush=True,
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ntng_ray.sweep.spec import load_sweep

    address = [f"address={args.address}"] if args.address else []
    spec = load_sweep(args.sweep, [*args.overrides, *address])
    if args.dry_run:
        from ntng_ray.sweep.plan import base_mapping, check_trial_configs, format_plan

        base = base_mapping(spec)
        check_trial_configs(spec, base)
        print(format_plan(spec, base))
        return 0
    from ntng_ray.sweep.runner import run_sweep

    summary = run_sweep(spec, resume=args.resume, report_dir=args.out)
    print(
        f"sweep {summary['name']!r} done in {summary['wall_seconds']:.0f} s: "
        f"{summary['sweep_rst_seconds']:.1f} RST s spent in all (strategies' preparation "
        f"{summary['preparation_rst_seconds']:.1f}); folder {summary['root']}"
    )
    if "report" in summary:
        # The report without image links, then report.html's path and the UI address.
        print(summary["report"], end="")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from ntng_ray.config import load_config, shipped_config_names

    if args.config is None:
        print("\n".join(shipped_config_names()))
        return 0
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from ntng_ray.config.presets import PRESETS

    width = max(len(name) for name in PRESETS)
    for preset in PRESETS.values():
        print(
            f"{preset.name:<{width}}  {preset.architecture:<12} layers {preset.num_layers:>2}  "
            f"hidden {preset.hidden:>4}  seq {preset.seq_len:>3}  vocab {preset.vocab_size:>5}  "
            f"{preset.description}"
        )
    return 0


def _cmd_strategies(args: argparse.Namespace) -> int:
    import inspect

    from ntng_ray.strategies import strategy_class, strategy_names

    if args.name is None:
        for name in strategy_names():
            if not strategy_class(name).listed:
                continue
            card = inspect.getmodule(strategy_class(name)).__doc__ or ""
            print(f"{name:<20} {card.strip().splitlines()[0] if card.strip() else ''}")
        return 0
    try:
        cls = strategy_class(args.name)
    except ValueError as exc:
        raise NtngError(f"strategy {args.name!r}: {exc}") from None
    print((inspect.getmodule(cls).__doc__ or "").strip())
    print("\nparameters (strategy.<name>=value):")
    for field, info in cls.Params.model_fields.items():
        print(f"  {field} = {info.default!r}  {info.description or ''}".rstrip())
    return 0


def _cmd_rst_list(args: argparse.Namespace) -> int:
    from ntng_ray.rst.table import list_shipped_tables, validate_table

    for table in list_shipped_tables():
        status = "valid" if validate_table(table).ok else "INVALID"
        print(f"{table.table_id:<28} preset {table.preset:<14} {status:<8} {table.description}")
    return 0


def _cmd_rst_validate(args: argparse.Namespace) -> int:
    from ntng_ray.rst.table import load_table, validate_table

    report = validate_table(load_table(args.table))
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ntng_ray.preparation.calibrate import calibrate
    from ntng_ray.rst.table import validate_table, write_table

    table = calibrate(
        args.preset,
        microbatch=args.microbatch,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        name=args.name,
    )
    report = validate_table(table)
    if not report.ok:
        raise NtngError(
            f"the measured table did not validate, so {args.out} was not written "
            f"(timing noise? try more --repeats or a larger --microbatch):\n{report.summary()}"
        )
    write_table(table, args.out)
    print(f"wrote {args.out}")
    print(report.summary())
    return 0


def _cmd_prebuild_ops(args: argparse.Namespace) -> int:
    import time

    import torch

    from ntng_ray.engines.deepspeed_engine import prebuild_ops

    started = time.perf_counter()
    built = prebuild_ops(torch.device(args.device))
    names = ", ".join(built) or "none needed"
    print(f"DeepSpeed ops ready ({names}) in {time.perf_counter() - started:.1f} s")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ntng_ray.preparation.strategy import run_prepare_cli

    return run_prepare_cli(args.config, args.overrides)


def _cmd_named_prepare(args: argparse.Namespace) -> int:
    """A command a strategy's preparation names for itself (``rho-prepare``)."""
    from ntng_ray.preparation.strategy import run_prepare_cli
    from ntng_ray.strategies import strategy_preparing_for

    command = args.command
    return run_prepare_cli(args.config, args.overrides, command, strategy_preparing_for(command))


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ntng_ray.downstream.finetune import run_finetune_cli

    return run_finetune_cli(args.checkpoint, args.suite, args.tasks, args.data_dir, args.overrides)


def _cmd_ui(args: argparse.Namespace) -> int:
    from ntng_ray.track.ui import run_ui

    return run_ui(args.host, args.port, args.tracking_uri)


def _cmd_report(args: argparse.Namespace) -> int:
    from ntng_ray.config import TrackingConfig
    from ntng_ray.sweep.render import publish_report, terminal_text
    from ntng_ray.sweep.results import build_report, find_parent_run, open_report_client
    from ntng_ray.track.tracker import resolve_store as resolve_tracking_uri

    client = open_report_client(resolve_tracking_uri(TrackingConfig(uri=args.tracking_uri)))
    report = build_report(client, find_parent_run(client, args.sweep))
    out = Path(args.out) if args.out else None
    files = publish_report(client, report, out, ui_url=args.ui_url)
    for path in files:
        print(f"wrote {path}")
    print(terminal_text(report, files, ui_url=args.ui_url), end="")
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The run config and its overrides, as every command that runs a config takes them."""
    parser.add_argument("config", help="path to a run config YAML, or a shipped config name")
    parser.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntng",
        description=(
            "Pretrain BERT and T5 under a fixed budget of reference system time (RST) and "
            "compare efficient-training methods with a tuned, fully-decayed baseline."
        ),
        epilog="Run `ntng COMMAND --help` for each command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pretrain = sub.add_parser(
        "pretrain",
        help="train one model in this process until its RST budget is spent",
        description=(
            "Train one model until its RST budget is spent, evaluating validation loss (and the "
            "full model's loss on a fixed training sample) at the configured progress points. "
            "Writes config.yaml, metrics.jsonl and summary.json to output_dir."
        ),
        epilog="Example: ntng pretrain bert-tiny-synthetic budget.rst_seconds=30 output_dir=runs/a",
    )
    _add_config_arguments(pretrain)
    pretrain.set_defaults(func=_cmd_pretrain)

    sweep = sub.add_parser(
        "sweep",
        help="run a sweep: per-strategy tuning and final seeds under RST budgets, on Ray Tune",
        description=(
            "Run the protocol of a sweep file: at each budget every strategy gets the same "
            "number of tuning trials from the same searcher, each strategy's best configuration "
            "(lowest validation loss) is re-run over the final seeds, every trial is recorded as "
            "a child of the sweep's MLflow parent run, and the comparison report is written to "
            "the parent run. Local Ray unless backend address / $RAY_ADDRESS names a cluster."
        ),
        epilog="Example: ntng sweep sweeps/debug.yaml   (then: ntng report debug --out report/)",
    )
    sweep.add_argument("sweep", help="sweep file (YAML) or the name of one in sweeps/")
    sweep.add_argument("overrides", nargs="*", help="sweep settings as dotted key=value pairs")
    sweep.add_argument(
        "--dry-run", action="store_true", help="validate, print the trial plan and its total RST"
    )
    sweep.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep of the same file"
    )
    sweep.add_argument("--out", type=Path, help="also write the report files to this folder")
    sweep.add_argument(
        "--address", help="Ray cluster to run on (default: the file's address, $RAY_ADDRESS)"
    )
    sweep.set_defaults(func=_cmd_sweep)

    config = sub.add_parser(
        "config",
        help="print a resolved, validated config (or list the shipped ones)",
        description="Validate a config with its overrides; print it resolved, as a run records it.",
    )
    config.add_argument(
        "config", nargs="?", help="path or shipped name; omit to list shipped configs"
    )
    config.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    config.set_defaults(func=_cmd_config)

    presets = sub.add_parser(
        "presets", help="list the model presets", description="List the model presets."
    )
    presets.set_defaults(func=_cmd_presets)

    strategies = sub.add_parser(
        "strategies",
        help="list the training strategies, or show one's card and parameters",
        description="Without a name: one line per strategy. With one: its card and parameters.",
    )
    strategies.add_argument("name", nargs="?", help="a strategy name")
    strategies.set_defaults(func=_cmd_strategies)

    rst = sub.add_parser(
        "rst",
        help="list and validate reference tables",
        description="Reference tables map units of work to seconds on one reference machine.",
    )
    rst_sub = rst.add_subparsers(dest="rst_command", required=True, metavar="ACTION")
    rst_list = rst_sub.add_parser("list", help="list the shipped tables and whether each is valid")
    rst_list.set_defaults(func=_cmd_rst_list)
    rst_validate = rst_sub.add_parser(
        "validate",
        help="check a table; exit 0 if valid, 1 naming the offending entry if not",
        description=(
            "Check that entries are positive, complete for every layer count, increasing in "
            "layers, and close to a linear fit in layers (worst residual reported)."
        ),
    )
    rst_validate.add_argument("table", help="shipped table name or path to a JSON table")
    rst_validate.set_defaults(func=_cmd_rst_validate)

    calibrate = sub.add_parser(
        "calibrate",
        help="measure this machine and write a reference table",
        description=(
            "Time forward+backward and forward-only passes of one microbatch at every active-layer "
            "count, one optimizer step of the full model for each of AdamW, Lion and Sophia-G, and "
            "one Sophia-G Hessian estimate (warm-up, repeated timing, median), and write them as "
            "a reference table bound to the preset."
        ),
    )
    calibrate.add_argument("--preset", required=True, help="model preset (see `ntng presets`)")
    calibrate.add_argument(
        "--microbatch", type=int, default=32, help="sequences per microbatch (32)"
    )
    calibrate.add_argument("--out", required=True, help="path of the JSON table to write")
    calibrate.add_argument("--repeats", type=int, default=7, help="timed repetitions per entry (7)")
    calibrate.add_argument("--warmup", type=int, default=2, help="untimed warm-up passes (2)")
    calibrate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    calibrate.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    calibrate.add_argument("--name", help="table name (default: calibrated-<preset>)")
    calibrate.set_defaults(func=_cmd_calibrate)

    prepare = sub.add_parser(
        "prepare",
        help="run the preparation a strategy needs before it trains (e.g. RHO-loss's IL model)",
        description=(
            "Run the work the config's strategy needs before training (for rho_loss: train an "
            "irreducible-loss model and store its per-example losses) into output_dir, and print "
            "the strategy setting that hands the folder to training runs. Its RST is reported "
            "apart from any run's budget."
        ),
        epilog=(
            "Example: ntng prepare bert-tiny-synthetic strategy.name=rho_loss output_dir=il/bert"
        ),
    )
    _add_config_arguments(prepare)
    prepare.set_defaults(func=_cmd_prepare)

    rho = sub.add_parser(
        "rho-prepare",
        help="train RHO-loss's irreducible-loss model and store its per-example losses",
        description=(
            "Train an irreducible-loss model of the config's preset on a held-out "
            "strategy.il_fraction of the training rows (drawn by data.split_seed, disjoint from "
            "validation) under strategy.il_budget_rst_seconds (default: the run's budget), then "
            "store its loss on every other training row in output_dir, for "
            "strategy.name=rho_loss strategy.il_dir=DIR."
        ),
        epilog="Example: ntng rho-prepare bert-tiny-synthetic output_dir=il/bert",
    )
    _add_config_arguments(rho)
    rho.set_defaults(func=_cmd_named_prepare)

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained model on GLUE or SuperGLUE tasks and score them",
        description=(
            "Fine-tune the model a pretraining run exported on each task (BERT: a classification "
            "or regression head; T5: text-to-text, labels as words, scored by generation) and "
            "write OUT/scores.json: per task its validation metrics, and the suite's average "
            "(WNLI excluded from GLUE's). Settings (key=value): epochs, batch_size, lr, warmup, "
            "max_length, seed, max_train_examples, max_eval_examples, report=last|best, threads."
        ),
        epilog=(
            "Example: ntng finetune --checkpoint runs/bert-tiny --suite glue --tasks SST-2,CoLA "
            "--data-dir data/glue output_dir=runs/bert-tiny-glue"
        ),
    )
    finetune.add_argument(
        "--checkpoint", required=True, help="a pretraining run's output_dir, or its model/ folder"
    )
    finetune.add_argument("--suite", required=True, help="glue or superglue")
    finetune.add_argument("--tasks", help="comma-separated task names, any case (default: all)")
    finetune.add_argument(
        "--data-dir",
        help="folder in the benchmark's layout (GLUE: <TASK>/dev.tsv, SuperGLUE: <Task>/val.jsonl);"
        " default: the Hugging Face hub",
    )
    finetune.add_argument(
        "overrides", nargs="*", help="settings as key=value pairs, e.g. output_dir=runs/ft epochs=3"
    )
    finetune.set_defaults(func=_cmd_finetune)

    prebuild = sub.add_parser(
        "prebuild-ops",
        help="compile DeepSpeed's JIT C++ ops once (CI, cluster images)",
        description=(
            "DeepSpeed compiles C++ ops on first use (about 45 s each) into $TORCH_EXTENSIONS_DIR; "
            "build them once, ahead of runs and tests."
        ),
    )
    prebuild.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    prebuild.set_defaults(func=_cmd_prebuild_ops)

    ui = sub.add_parser(
        "ui",
        help="serve the MLflow UI for the configured store on 127.0.0.1",
        description=(
            "Start the MLflow UI against the tracking store runs log to ($MLFLOW_TRACKING_URI, "
            "else sqlite:///mlflow.db in this folder) and print its address. Ctrl-C stops it."
        ),
    )
    ui.add_argument("--port", type=int, default=5000, help="port (5000)")
    ui.add_argument(
        "--host", help="address to bind; default 127.0.0.1 (pass another explicitly to expose it)"
    )
    ui.add_argument("--tracking-uri", help="MLflow store to serve (default as above)")
    ui.set_defaults(func=_cmd_ui)

    report = sub.add_parser(
        "report",
        help="compare a sweep's strategies with the baseline: tables, verdicts and plots",
        description=(
            "Read a sweep's runs from MLflow and write, per budget, each strategy's final "
            "train-eval and validation loss (and downstream scores) over seeds, the difference to "
            "the baseline with a 95% Welch's t interval and a verdict, the RST spent in tuning "
            "and plots: report.md, report.html and PNGs, to --out DIR and to the parent run."
        ),
        epilog="Example: ntng report debug --out reports/debug",
    )
    report.add_argument("sweep", help="sweep name (its most recent parent run) or parent run id")
    report.add_argument("--out", help="folder to write the report into as well")
    report.add_argument("--tracking-uri", help="MLflow store (default: as `ntng ui`)")
    report.add_argument(
        "--ui-url",
        help=(
            "address of the MLflow UI serving that store, e.g. http://127.0.0.1:5000: the "
            "report links strategies and runs there (default: the tracking URI if it is http)"
        ),
    )
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`ntng sweep F --dry-run a.b=1`); argparse stops
    # collecting positionals at the first option, so the later ones arrive here.
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    try:
        return args.func(args)
    except NtngError as exc:
        print(f"ntng: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ntng: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
