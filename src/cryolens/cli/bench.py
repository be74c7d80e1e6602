"""Benchmark: standard simulated tasks × any registered recipe (and RELION), scored the same way.

  cryolens bench list                                   tasks of the built-in suites, methods
  cryolens bench run --tasks default --methods all --out bench_run [--budget-s 600 --scale 1]
  cryolens bench run --profile cryobench --dry-run      sizes, estimated time and memory; nothing runs
  cryolens bench report bench_run [--rescore] [--markdown benchmarks/LEADERBOARD.md]
  cryolens bench sweep --tasks tiny --task NAME --method M [--param P --values 1,2,4] --seeds 0,1,2 --out DIR
  cryolens bench inject --tasks default --task NAME --pose-errors 0,2,5,10 --defocus-errors 0,500,1000 --out DIR

A task file (YAML; built-in suites: default, tiny, preferred) gives the simulated datasets, what
each method is given (poses, CTF) and what is scored. Datasets are simulated once and cached by
the hash of their spec (--cache, default ~/.cache/cryolens/bench). Each method × task runs in its
own process under --budget-s seconds and --memory-mb MB; a run over budget is recorded as such.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")

    def common(q, many: bool = True):
        q.add_argument("--tasks", default=None,
                       help="task file (.yaml) or built-in suite name (default: default; hetero with --profile)")
        q.add_argument("--profile", default=None,
                       help="a profile of the task file (hetero: default, cryobench): its sizes for a machine")
        if many:
            q.add_argument("--only", default=None, help="comma-separated task names (or name prefixes) to keep")
        q.add_argument("--scale", type=float, default=1.0, help="multiply every task's number of images (default 1)")
        q.add_argument("--cache", default=None, help="dataset cache folder (default ~/.cache/cryolens/bench)")
        q.add_argument("--device", default=None, help="torch device (default: cpu)")

    q = sub.add_parser("list", help="list the tasks of a suite and the available methods")
    common(q)
    q = sub.add_parser("run", help="run methods on tasks, then write the leaderboard")
    common(q)
    q.add_argument("--methods", default="all", help="comma-separated recipe / adapter names, or all (default)")
    q.add_argument("--out", default=None, help="output folder (required unless --dry-run)")
    q.add_argument("--dry-run", action="store_true",
                   help="print the sizes and the estimated time and memory of every run; run nothing")
    q.add_argument("--budget-s", type=float, default=None,
                   help="wall-time budget per run in seconds (default: the profile's, else 600)")
    q.add_argument("--memory-mb", type=float, default=None,
                   help="memory budget per run in MB (default: the profile's, else 6000)")
    q.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    q.add_argument("--set", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                   help="override a recipe option (METHOD may be * for every recipe having it); repeatable")
    q.add_argument("--rerun", action="store_true", help="rerun runs already finished in --out")
    q.add_argument("--jobs", type=int, default=None,
                   help="runs at a time, each in its own process of --threads threads (default: the profile's, "
                        "else 1)")
    q.add_argument("--no-halves", action="store_true",
                   help="skip the two half-data fits that measure conformational resolution (a profile may "
                        "skip them by default: halves: false)")
    q.add_argument("--score-times", default=None, metavar="S,S,...",
                   help="wall-clock seconds of a learned run's fit at which a checkpoint is kept and scored "
                        "afterwards, for the score against time (default: the profile's, else 60,300,1200; "
                        "empty: none)")
    q.add_argument("--markdown", default=None, help="also write the leaderboard Markdown here")
    q = sub.add_parser("report", help="(re)write the leaderboard of a run folder")
    q.add_argument("run_dir")
    q.add_argument("--rescore", action="store_true",
                   help="score the finished runs with unknown poses again from their files first")
    q.add_argument("--markdown", default=None, help="also write the leaderboard Markdown here")
    q = sub.add_parser("sweep", help="rerun one recipe over seeds and one option; plot the spread")
    common(q, many=False)
    q.add_argument("--task", required=True, help="task name within --tasks")
    q.add_argument("--method", required=True)
    q.add_argument("--param", default=None, help="option to sweep (e.g. latent_dim)")
    q.add_argument("--values", default="", help="comma-separated values of --param")
    q.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    q.add_argument("--out", required=True)
    q.add_argument("--budget-s", type=float, default=600)
    q.add_argument("--memory-mb", type=float, default=6000)
    q = sub.add_parser("inject", help="back-project with known pose / defocus errors; plot resolution vs error")
    common(q, many=False)
    q.add_argument("--task", required=True, help="task name within --tasks")
    q.add_argument("--pose-errors", default="0,2,5,10", help="pose error σ values in degrees")
    q.add_argument("--defocus-errors", default="0,250,500,1000,2000", help="defocus error σ values in Å")
    q.add_argument("--out", required=True)


def _value(text: str):
    from ..methods.config import parse_text

    return parse_text(text)


def _overrides(items: list[str]) -> dict:
    from .options import parse_set

    return parse_set(items, dotted=True)


def _tasks(args, many: bool = True):
    from ..errors import InputError
    from ..bench.suite import load_tasks, scale_task

    tasks = [scale_task(t, args.scale) for t in load_tasks(args.tasks, getattr(args, "profile", None))]
    if many and getattr(args, "only", None):
        keep = [s.strip() for s in args.only.split(",") if s.strip()]
        tasks = [t for t in tasks if any(t.name == k or t.name.startswith(k) for k in keep)]
        if not tasks:
            raise InputError(f"--only {args.only}: no task of {args.tasks} matches")
    return tasks


def _one_task(args):
    from ..errors import InputError

    tasks = {t.name: t for t in _tasks(args, many=False)}
    if args.task not in tasks:
        raise InputError(f"{args.tasks}: no task {args.task!r} (tasks: {', '.join(tasks)})")
    return tasks[args.task]


def _methods(names: str):
    from ..errors import InputError
    from ..bench.runner import available_methods

    try:
        return available_methods([n.strip() for n in names.split(",") if n.strip()])
    except KeyError as e:
        raise InputError(f"--methods: {e.args[0]}") from None


def _command_line(args) -> str:
    """The ``cryolens bench run`` command line equivalent to ``args`` (for the leaderboard)."""
    parts = ["cryolens", "bench", "run", "--tasks", args.tasks] + (["--profile", args.profile] if args.profile else [])
    parts += ["--methods", args.methods, "--out", args.out,
             "--budget-s", f"{args.budget_s:g}", "--memory-mb", f"{args.memory_mb:g}"]
    for flag, value in (("--only", args.only), ("--cache", args.cache), ("--device", args.device),
                        ("--markdown", args.markdown)):
        if value:
            parts += [flag, value]
    if args.scale != 1:
        parts += ["--scale", f"{args.scale:g}"]
    if args.threads != 1:
        parts += ["--threads", str(args.threads)]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    for item in args.set:
        parts += ["--set", item]
    parts += [f for f, on in (("--rerun", args.rerun), ("--no-halves", args.no_halves)) if on]
    if args.score_times != "60,300,1200":
        parts += ["--score-times", args.score_times]
    return " ".join(shlex.quote(p) for p in parts)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _profile_defaults(args, tasks) -> None:
    """Fill the options the user left out from the tasks' profile (budgets, jobs, halves, score times),
    else the defaults."""
    for key, fallback in (("budget_s", 600.0), ("memory_mb", 6000.0), ("jobs", 1)):
        if getattr(args, key) is None:
            value = max([float(t.options.get(key, 0)) for t in tasks] + [0.0]) or fallback
            setattr(args, key, int(value) if key == "jobs" else value)
    if any(t.options.get("halves") is False for t in tasks):
        args.no_halves = True
    if args.score_times is None:
        given = next((t.options["score_times"] for t in tasks if "score_times" in t.options), (60, 300, 1200))
        args.score_times = ",".join(f"{float(x):g}" for x in given)


def _check_profile(args, tasks, methods) -> None:
    """Sizes and estimates of a profile's runs (:mod:`cryolens.bench.profiles`), printed with ``--dry-run``;
    refuses (InputError, one line) when a run needs more memory than this machine has."""
    from ..bench.profiles import available_memory_mb, check_memory, dry_run_table, estimate
    from ..bench.runner import compatible
    from ..bench.suite import load_tasks

    reference = load_tasks("default")[0].options.get("method_config") or {}
    est = [estimate(t, n, args.budget_s, reference)
           for t in tasks for n, m in methods.items() if compatible(m.recipe, t)]
    if args.dry_run:
        print(dry_run_table(tasks, est, args.jobs))
    available = available_memory_mb()
    check_memory(est, available, args.profile or args.tasks, args.memory_mb)
    if args.dry_run:
        print(f"memory: the largest run fits this machine ({available / 1024:.1f} GB available) and the "
              f"budget of {args.memory_mb / 1024:.1f} GB per run")


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    cmd = args.bench_command
    if hasattr(args, "tasks") and args.tasks is None:
        args.tasks = "hetero" if getattr(args, "profile", None) else "default"
    if cmd == "list":
        from ..bench.runner import available_methods, compatible

        methods = available_methods()
        for t in _tasks(args):
            ok = [n for n, m in methods.items() if compatible(m.recipe, t)]
            print(f"{t.name}: N={t.dataset['n_images']} D={t.dataset['box']} SNR={t.snr:g} "
                  f"known={'poses+' if t.known.poses else ''}{'ctf' if t.known.ctf else ''} → {', '.join(ok) or '-'}")
        print("methods: " + ", ".join(f"{n} ({m.origin}, {m.recipe.heterogeneity}, needs "
                                      f"{'+'.join(sorted(m.recipe.needs)) or 'nothing'})" for n, m in methods.items()))
        return 0
    if cmd == "run":
        from ..bench.leaderboard import write_leaderboard
        from ..bench.runner import run_suite
        from ..io.files import atomic_write_text

        tasks = _tasks(args)
        methods = _methods(args.methods)
        _profile_defaults(args, tasks)
        if args.dry_run or args.profile:
            _check_profile(args, tasks, methods)
            if args.dry_run:
                return 0
        if not args.out:
            from ..errors import InputError

            raise InputError("bench run: --out is required (or --dry-run)")
        command = "cryolens " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else \
            _command_line(args)
        t0 = time.time()

        def show(row):
            print(f"[{time.time() - t0:7.0f} s] {row['task']:<32} {row['method']:<22} {row['status']:<11} "
                  f"{row['wall_s']:6.1f} s {row['peak_mem_mb']:6.0f} MB {row.get('error', '')[:80]}", flush=True)

        run_suite(tasks, methods, args.out, budget_s=args.budget_s, memory_mb=args.memory_mb, cache_dir=args.cache,
                  device=args.device, threads=args.threads, overrides=_overrides(args.set), rerun=args.rerun,
                  halves=not args.no_halves, on_row=show, snapshot_times_s=tuple(_floats(args.score_times)),
                  jobs=args.jobs)
        import json
        from pathlib import Path

        summary = json.loads((Path(args.out) / "results.json").read_text())
        summary["command"] = command
        atomic_write_text(Path(args.out) / "results.json", json.dumps(summary, indent=1) + "\n")
        board = write_leaderboard(args.out, command, args.markdown)
        print(board["markdown"].split("## All runs")[0])
        print(f"suite: {time.time() - t0:.0f} s; leaderboard: {Path(args.out) / 'leaderboard.md'}")
        return 0
    if cmd == "report":
        from ..bench.leaderboard import write_leaderboard

        command = ""
        if args.rescore:
            import json
            from pathlib import Path

            from ..bench.rescore import rescore

            for row in rescore(args.run_dir):
                print(f"rescored {row['task']} / {row['method']}")
            results = Path(args.run_dir) / "results.json"
            first = json.loads(results.read_text()).get("command", "") if results.is_file() else ""
            again = f"cryolens bench report {args.run_dir} --rescore" + (f" --markdown {args.markdown}"
                                                                       if args.markdown else "")
            command = f"{first}\n{again}" if first else again
        board = write_leaderboard(args.run_dir, command, markdown_copy=args.markdown)
        print(board["markdown"].split("## All runs")[0])
        return 0
    if cmd == "sweep":
        from ..bench.diagnostics import sweep
        from ..errors import InputError

        method = _methods(args.method)[args.method]
        if args.param and not args.values:
            raise InputError("--param needs --values")
        values = [_value(v) for v in args.values.split(",")] if args.param else []
        table = sweep(_one_task(args), method, args.param, values, [int(s) for s in args.seeds.split(",")],
                      args.out, args.budget_s, args.memory_mb, args.cache, args.device)
        for k, spread in table["spread"].items():
            print(k + ": " + ", ".join(f"{v}: {s['mean']:.4g} ± {s['std']:.2g}" if s["mean"] is not None
                                       else f"{v}: -" for v, s in zip(table["values"], spread)))
        print(f"plot: {args.out}/sweep.png")
        return 0
    if cmd == "inject":
        from ..bench.diagnostics import inject_errors

        res = inject_errors(_one_task(args), args.out, _floats(args.pose_errors), _floats(args.defocus_errors),
                            args.cache, args.device)
        for x in res["pose"]:
            print(f"pose error σ {x['sigma_deg']:g}°: {x['resolution_A']:.2f} Å")
        for x in res["defocus"]:
            print(f"defocus error σ {x['sigma_A']:g} Å: {x['resolution_A']:.2f} Å")
        print(f"plot: {args.out}/injection.png")
        return 0
    return 2
