"""Command line: `python -m bbench run | bench | study | report | list | info | prepare | datasets`
(and `bbench ...`).

A thin layer over the library. BalanceMM-style flags are accepted: `--trainer OGM
--dataset CREMAD --alpha 0.5 --device 0`; any `--key value` that is not a bbench flag is
a setting override, exactly like `--set key=value`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Sequence

from bbench.registry import UnknownNameError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, UnknownNameError, FileExistsError,
                                                    FileNotFoundError, RuntimeError)


def _parse_settings(pairs: Sequence[str], extra: Sequence[str]) -> dict[str, Any]:
    """`--set k=v` pairs plus BalanceMM-style `--k v` / `--k=v` leftovers, as strings."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        settings[key.strip()] = value.strip()
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}; settings are --key value or --set key=value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value = extra[i + 1]
            i += 2
        else:
            raise ValueError(f"setting --{key} needs a value")
        settings[key.replace("-", "_") if "." not in key else key] = value
    return settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset name (default mfeat; see `bbench list datasets`)")
    parser.add_argument("--data-root", dest="data_root", metavar="DIR",
                        help="folder of a paper dataset's files (BalanceMM layout; datasets.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting: a method hyper-parameter (alpha=0.5), a shorthand "
                             "(epochs=3, lr=0.1) or a dotted key (train.optimizer.lr=0.1)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N, or a bare GPU index N (BalanceMM style)")
    parser.add_argument("--modalities", help="comma-separated modality names, e.g. fac,mor")
    parser.add_argument("--epochs", help="number of training epochs")
    parser.add_argument("--seed", help="run seed")
    parser.add_argument("--preset", help="a preset name or a .toml file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


class MethodSettingsHelp(str):
    """The `run --help` epilog: every method's own settings, read from the registry on demand.

    A str subclass whose text is computed when argparse formats it, so building the parser
    (every CLI call) imports no torch; only `--help` does.
    """

    def splitlines(self, keepends: bool = False) -> list[str]:  # how argparse reads the epilog
        return self.text().splitlines(keepends)

    def text(self) -> str:
        from bbench.config.fields import describe_range, fields_of, is_ranged
        from bbench.methods.registry import METHODS, WINDOW_ALIASES

        lines = ["method settings (--KEY VALUE or --set KEY=VALUE; ranges are checked before "
                 "training):"]
        for name in METHODS:
            cls = METHODS.get(name)
            params = [describe_range(f) if is_ranged(f) else f.name
                      for f in fields_of(cls.Params).values()]
            aliases = [f"{a} = {t}" for a, t in {**(WINDOW_ALIASES if cls.windowed else {}),
                                                 **cls.param_aliases}.items()]
            text = ", ".join(params) or "(none)"
            lines.append(f"  {name}: {text}" + (f" [aliases: {', '.join(aliases)}]" if aliases else ""))
        lines.append("general settings: --lr, --batch_size, --epochs, --seed, --optimizer, "
                     "--momentum, --weight_decay, --step_size, --fusion, --mask, dotted keys such "
                     "as --train.optimizer.lr (see docs/architecture.md)")
        return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train one method on one dataset and write its record",
                           epilog=MethodSettingsHelp(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p_run.add_argument("--method", "--trainer", dest="method",
                       help="method name (default: the reference method, marked in `bbench list "
                            "methods`)")
    _common(p_run)
    p_run.add_argument("--out", help="run directory (must not exist); default runs/<dataset>/<method>-<time>")
    p_run.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run with exactly its settings (other settings "
                            "are refused; only progress display and worker count may change)")
    p_bench = sub.add_parser("bench", help="every method on one dataset, paper-style table")
    _common(p_bench)
    p_bench.add_argument("--methods", help="comma-separated subset of balancing methods")
    p_bench.add_argument("--out", help="bench directory (must not exist)")
    p_bench.add_argument("--seeds", type=int, default=1, metavar="N",
                         help="run every row with N training seeds (--seed, --seed+1, ...) and "
                              "print mean [95%% CI] (n) over them (default 1)")
    p_report = sub.add_parser("report", help="tables and figures from finished run records "
                                             "(never re-runs anything)")
    p_report.add_argument("paths", nargs="+", metavar="STUDY_OR_RUN_DIR",
                          help="study, bench or run directories (searched recursively for "
                               "record.json) or record files")
    p_report.add_argument("--out", required=True, help="report directory (must not exist or be empty)")
    p_report.add_argument("--format", default="md,latex,csv,html",
                          help="comma-separated formats: md, latex, csv, html (default: all)")
    p_report.add_argument("--paper", metavar="TSV",
                          help="the published Table 2 to print beside the measured values (default: "
                               "cases/paper_table2.tsv of the source checkout, if present)")
    p_report.add_argument("--no-paper", dest="no_paper", action="store_true",
                          help="leave out the published values")
    p_report.add_argument("--curves", metavar="METHODS",
                          help="comma-separated methods (or row labels) whose validation curves "
                               "are drawn, or `all` (default: the reference method and each "
                               "dataset's best balancing method)")
    p_report.add_argument("--quiet", action="store_true", help="no progress bar")
    p_study = sub.add_parser("study", help="methods × datasets × seeds (× tuning trials or a sweep) "
                                           "as one resumable job set")
    p_study.add_argument("--out", required=True, metavar="STUDY_DIR",
                         help="study directory; re-running the same command there runs only "
                              "what is not finished (interrupted jobs resume)")
    p_study.add_argument("--config", metavar="FILE.toml",
                         help="a study file (methods, datasets, seeds, trials, sweep, "
                              "study_seed, epochs and a [set] table); flags override it")
    p_study.add_argument("--methods", help="comma-separated methods, or 'all' (default): every "
                                           "registered method that fits a dataset's modalities")
    p_study.add_argument("--datasets", help="comma-separated datasets (default mfeat)")
    p_study.add_argument("--seeds", metavar="N", help="replicates per configuration (default 3)")
    p_study.add_argument("--study-seed", dest="study_seed", metavar="S",
                         help="the seed every run seed and trial draw is derived from (default 0)")
    p_study.add_argument("--trials", metavar="N",
                         help="tune: N configurations per method and dataset drawn from the "
                              "declared search spaces, selected on validation accuracy")
    p_study.add_argument("--tune-optimizer", dest="tune_optimizer", action="store_const",
                         const=True, help="with --trials: the reference method's learning rate "
                                          "is tuned too (it has no hyper-parameters of its own)")
    p_study.add_argument("--sweep", metavar="PARAM=V1,V2,...",
                         help="run one method's parameter over a grid (the balance figure)")
    p_study.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a setting of every run, as `run --set`; METHOD.KEY=VALUE "
                              "sets one method's runs only")
    p_study.add_argument("--epochs", help="number of training epochs of every run")
    p_study.add_argument("--workers", type=int, default=1, metavar="N",
                         help="jobs run at once, each in its own process (default 1: in this one)")
    p_study.add_argument("--dry-run", dest="dry_run", action="store_true",
                         help="list the jobs and their state; run and write nothing")
    p_study.add_argument("--quiet", action="store_true", help="no progress display")
    p_list = sub.add_parser("list", help="registered methods, datasets, encoders, fusions, presets")
    p_list.add_argument("what", nargs="?", default="all",
                        choices=["all", "methods", "datasets", "encoders", "fusions", "presets"])
    sub.add_parser("info", help="versions and whether the compiled kernels loaded")
    p_prepare = sub.add_parser("prepare", help="raw public downloads -> the on-disk formats the loaders read")
    from bbench.prepare.cli import add_arguments as add_prepare_arguments
    add_prepare_arguments(p_prepare)
    p_data = sub.add_parser("datasets", help="dataset details")
    p_data.add_argument("--info", metavar="DATASET", required=True)
    return parser


def _overrides(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    settings = _parse_settings(args.set, extra)
    for flag in ("device", "modalities", "epochs", "seed", "data_root"):
        value = getattr(args, flag, None)
        if value is not None:
            settings[flag] = value
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        settings.setdefault("progress", "false")
    return settings


def cmd_run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from bbench.runner import run

    settings = _overrides(args, extra)
    if args.out:
        settings["out"] = args.out
    if args.resume:
        result = run(args.method, args.dataset, preset=args.preset, resume=args.resume, **settings)
    else:
        result = run(args.method, args.dataset, preset=args.preset, **settings)
    print(summary(result))
    return 0


def summary(result) -> str:
    """Human-readable digest of one run record."""
    m = result.metrics
    lines = [f"{result.method} on {result.dataset}"]
    if "acc" in m:
        lines.append(f"  test acc {100 * m['acc']:.2f}%  macro-F1 {100 * m['f1']:.2f}%")
        per = [k[4:] for k in m if k.startswith("acc_")]
        lines += [f"  {x}: acc {100 * m[f'acc_{x}']:.2f}%  F1 {100 * m[f'f1_{x}']:.2f}%" for x in per]
    if "shapley" in m:
        lines.append("  Shapley " + ", ".join(f"{k} {v:+.4f}" for k, v in m["shapley"].items())
                     + f"  imbalance I {m['imbalance']:.4f}")
    for key in sorted(k for k in m if k.startswith("probe_acc_")):
        x = key[len("probe_acc_"):]
        uni = m.get(f"unimodal_acc_{x}")
        lines.append(f"  probe {x}: {100 * m[key]:.2f}%" + (f" (trained alone {100 * uni:.2f}%)"
                                                             if uni else ""))
    if "train_flops" in m:
        lines.append(f"  training FLOPs {m['train_flops']:.4e}  wall {m.get('wall_seconds', 0):.1f}s")
    lines.append(f"  record: {result.record_path}")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from bbench.report.bench import run_bench
    from bbench.report.table import (comparison_table, probe_table, seeded_comparison_table,
                                     seeded_probe_table)

    settings = _overrides(args, extra)
    if args.preset:
        raise ValueError("bench uses each dataset's own preset; override settings with --set")
    started = time.perf_counter()

    def on_run(i: int, n: int, label: str, result, seconds: float) -> None:
        if result is None:
            print(f"[{i + 1}/{n}] {label} ...", file=sys.stderr, flush=True)
        else:
            acc = result.metrics.get("acc", result.metrics.get("source_acc"))
            print(f"[{i + 1}/{n}] {label} done in {seconds:.1f}s"
                  + (f" (test acc {100 * acc:.2f}%)" if acc is not None else ""),
                  file=sys.stderr, flush=True)

    methods = args.methods.split(",") if args.methods else None
    bench = run_bench(args.dataset or "mfeat", methods, settings, args.out, on_run, seeds=args.seeds)
    if len(bench.seeds) > 1:
        table, probes = seeded_comparison_table(bench), seeded_probe_table(bench)
    else:
        table, probes = comparison_table(bench), probe_table(bench)
    seeds = f", seeds {', '.join(map(str, bench.seeds))}" if len(bench.seeds) > 1 else ""
    print(f"\n{bench.dataset} ({', '.join(bench.modalities)}): test split, best-validation epoch"
          f"{seeds}\n")
    print(table)
    if probes:
        print("\nEncoder quality inside the jointly trained model (probed) vs trained alone:\n")
        print(probes)
    for name, why in bench.skipped.items():
        print(f"not run: {name}: {why}")
    print(f"\nruns and records: {bench.out_dir}  ({time.perf_counter() - started:.0f}s in all)")
    (bench.out_dir / "table.md").write_text(table + "\n\n" + probes + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bbench.report.export import parse_formats
    from bbench.report.report import PAPER_TABLE, build_report

    formats = parse_formats(args.format)
    paper = None if args.no_paper else Path(args.paper) if args.paper else PAPER_TABLE
    if args.paper and not paper.is_file():
        raise FileNotFoundError(f"--paper {paper}: no such file")
    curves = args.curves.split(",") if args.curves and args.curves != "all" else args.curves or "auto"
    result = build_report(args.paths, args.out, formats, paper=paper, curves=curves,
                          progress=not args.quiet and sys.stderr.isatty())
    for line in result.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    for line in result.not_drawn:
        print(f"figure not drawn: {line}", file=sys.stderr)
    for line in result.balance_points:
        print(line)
    print(f"report of {result.records} records ({len(result.skipped)} skipped): "
          f"{len(result.tables)} tables, {len(result.figures)} figures, {len(result.files)} files in "
          f"{result.out_dir} ({result.seconds:.1f}s)")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from bbench.study.declare import declare_study
    from bbench.study.launch import ProcessPoolLauncher, SequentialLauncher
    from bbench.study.run import describe_plan, run_study

    study = declare_study(args.config, settings=_parse_settings(args.set, []), epochs=args.epochs,
                          methods=args.methods, datasets=args.datasets, seeds=args.seeds,
                          study_seed=args.study_seed, trials=args.trials,
                          tune_optimizer=args.tune_optimizer, sweep=args.sweep)
    launcher = ProcessPoolLauncher(args.workers) if args.workers > 1 else SequentialLauncher()
    started = time.perf_counter()
    try:
        outcome = run_study(study, args.out, launcher, progress=not args.quiet, dry_run=args.dry_run)
    except KeyboardInterrupt:
        print(f"bbench: study interrupted; re-run the same command to continue it (finished jobs "
              f"are kept, checkpointed ones resume): {args.out}", file=sys.stderr)
        return 130
    if args.dry_run:
        print(describe_plan(outcome))
        return 0
    for name, why in outcome.failed.items():
        print(f"failed: {name}: {why}", file=sys.stderr)
    print(f"study {outcome.root}: {len(outcome.plan.jobs)} jobs, {outcome.finished_before} finished "
          f"before, {len(outcome.launched)} launched, {len(outcome.failed)} failed "
          f"({time.perf_counter() - started:.0f}s)")
    if outcome.failed:
        print("re-run the same command to retry what failed (finished jobs are kept)")
        return 1
    print(f"report: python -m bbench report {outcome.root} --out REPORT_DIR")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from bbench.config.resolve import preset_names
    from bbench.data.registry import DATASETS
    from bbench.methods.registry import METHODS, methods_in_table_order
    from bbench.models.encoders import ENCODERS
    from bbench.models.fusion import FUSIONS

    what = args.what
    if what in ("all", "methods"):
        print("methods:")
        for name in methods_in_table_order():
            cls = METHODS.get(name)
            mark = "  (default; the comparison reference)" if cls.comparison_reference else ""
            print(f"  {name:<20} {cls.family}{mark}")
    if what in ("all", "datasets"):
        print("datasets:")
        for name in DATASETS:
            e = DATASETS.get(name)
            print(f"  {name:<20} {', '.join(e.modalities)} ({e.num_classes} classes)")
    if what in ("all", "encoders"):
        print("encoders: " + ", ".join(ENCODERS))
    if what in ("all", "fusions"):
        print("fusions: " + ", ".join(FUSIONS))
    if what == "all":
        print("presets: " + ", ".join(preset_names()))
    if what == "presets":
        print(preset_table())
    return 0


def preset_table() -> str:
    """Every dataset's preset, resolved (the paper's settings as bbench will run them)."""
    from tabulate import tabulate

    from bbench.config.resolve import resolve_spec
    from bbench.data.registry import DATASETS
    from bbench.methods.registry import reference_method

    rows = []
    for name in DATASETS:
        entry = DATASETS.get(name)
        if entry.preset != name:
            continue  # a view set sharing its parent's preset, or no preset (synthetic)
        spec = resolve_spec(reference_method(), name)
        opt, sched = spec.train.optimizer, spec.train.scheduler
        encoders = ", ".join(f"{m}: {spec.model.encoder_for(m).type}" for m in entry.modalities)
        step = f"{sched.step_size}/{sched.gamma:g}" if sched.type == "step" else sched.type
        momentum = f"{opt.momentum:g}" if opt.type == "sgd" else "-"
        rows.append([name, opt.type, f"{opt.lr:g}", momentum, f"{opt.weight_decay:g}",
                     step, spec.train.batch_size, spec.train.epochs, encoders, spec.model.fusion])
    return tabulate(rows, headers=["preset", "optimizer", "lr", "momentum", "weight decay",
                                   "StepLR step/gamma", "batch", "epochs", "encoders", "fusion"],
                    tablefmt="github")


def cmd_info() -> int:
    import torch

    from bbench import __version__, ops

    print(json.dumps({"bbench": __version__, "torch": torch.__version__,
                      "cuda_available": torch.cuda.is_available(),
                      "extension": ops.extension_info()}, indent=1))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from bbench.data.registry import DATASETS

    entry = DATASETS.get(args.info)
    print(f"{entry.name}: {entry.description}\nmodalities: {', '.join(entry.modalities)} "
          f"(available: {', '.join(entry.available_modalities)}); {entry.num_classes} classes")
    if entry.info_text is not None:
        print("\n" + entry.info_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("run", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="bbench: %(message)s")
    try:
        if args.command == "run":
            return cmd_run(args, extra)
        if args.command == "bench":
            return cmd_bench(args, extra)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "study":
            return cmd_study(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "info":
            return cmd_info()
        if args.command == "prepare":
            from bbench.prepare.cli import run_args
            return run_args(args)
        return cmd_datasets(args)
    except EXPECTED_ERRORS as err:
        print(f"bbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        from bbench.runner import RunInterrupted

        text = interrupt.message() if isinstance(interrupt, RunInterrupted) else "interrupted"
        print(f"bbench: {text}", file=sys.stderr)
        return 130
