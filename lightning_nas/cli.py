"""The ``lightning-nas`` command. Subcommands register themselves in ``_COMMANDS``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _add_demo(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    from lightning_nas._demo_tasks import TASKS

    p = sub.add_parser("demo", help="search, train, compress, explain and measure a model on real data, offline")
    p.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="digits",
        help="; ".join(f"{name}: {t.help}" for name, t in TASKS.items()),
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="epochs per training stage (default: the task's, "
        + ", ".join(f"{n} {t.max_epochs}" for n, t in TASKS.items())
        + ")",
    )
    p.add_argument("--online", action="store_true", help="sync the W&B run (needs a W&B key)")
    p.add_argument("--out", default="nas_runs/demo", help="output folder (default nas_runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the task's; text 1, digits torch's own)"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Lightning's messages, warnings and W&B's output (default: one line per stage)",
    )

    def run(args: argparse.Namespace) -> int:
        if args.max_epochs is not None and args.max_epochs < 1:
            raise SystemExit(f"--max-epochs must be >= 1, got {args.max_epochs}")
        if args.threads is not None and args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        from lightning_nas.demo import run_demo

        try:
            run_demo(
                max_epochs=args.max_epochs,
                online=args.online,
                out_dir=args.out,
                seed=args.seed,
                verbose=args.verbose,
                task=args.task,
                threads=args.threads,
            )
        except FileNotFoundError as exc:  # the task's data is not installed (e.g. wordnet-base): one line
            print(f"lightning-nas demo: {exc}", file=sys.stderr)
            return 2
        return 0

    return run


def _add_serve(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser(
        "serve", help="serve a bundle over HTTP on ONNX Runtime (POST /predict, GET /health, /card, /drift)"
    )
    p.add_argument("bundle", help="a bundle folder written by lightning_nas.deploy.bundle")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--int8", action="store_true", help="serve the bundle's int8 model")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch per request (default 256)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (default: from --max-batch)")
    p.add_argument("--window", type=int, default=512, help="recent inputs kept for GET /drift (default 512)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument(
        "--drift-thresholds",
        default=None,
        metavar="JSON",
        help='DriftThresholds for GET /drift as JSON, e.g. \'{"psi": 0.2, "ks_alpha": 0.01}\'',
    )

    def run(args: argparse.Namespace) -> int:
        from lightning_nas._optional import require

        for module in ("fastapi", "uvicorn"):  # the `serve` extra, checked before any work
            require(module, extra="serve", feature="serving over HTTP")
        import json

        from lightning_nas.deploy.bundle import BundleError, load_bundle
        from lightning_nas.deploy.serve import serve

        try:
            thresholds = json.loads(args.drift_thresholds) if args.drift_thresholds else None
        except json.JSONDecodeError as exc:
            print(f"lightning-nas serve: --drift-thresholds is not valid JSON: {exc}", file=sys.stderr)
            return 2
        try:
            b = load_bundle(args.bundle)
            if args.int8 and not b.has_int8:
                raise BundleError(f"--int8: bundle {args.bundle!r} has no int8 model")
        except BundleError as exc:
            print(f"lightning-nas serve: {exc}", file=sys.stderr)
            return 2
        print(
            f"serving {args.bundle} ({'int8' if args.int8 else 'float'}) on http://{args.host}:{args.port}", flush=True
        )
        try:
            serve(
                b,
                host=args.host,
                port=args.port,
                int8=args.int8,
                max_batch=args.max_batch,
                max_body_bytes=args.max_body_bytes,
                window=args.window,
                threads=args.threads,
                thresholds=thresholds,
            )
        except (ValueError, TypeError) as exc:
            print(f"lightning-nas serve: {exc}", file=sys.stderr)
            return 2
        return 0

    return run


def _add_report(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("report", help="a self-contained HTML report of a run (W&B offline run or file sink)")
    p.add_argument("run_dir", help="a W&B run or save dir, or a lightning_nas files folder (index.jsonl)")
    p.add_argument("-o", "--out", default="report.html", help="output HTML file (default report.html)")
    p.add_argument("--title", default=None, help="page title (default: from the run's name)")

    def run(args: argparse.Namespace) -> int:
        from lightning_nas.report import load_run, render

        out = Path(args.out)
        try:
            if out.is_dir():
                raise IsADirectoryError(
                    f"-o {args.out!r} is a folder; give a file name such as {str(out / 'report.html')!r}"
                )
            data = load_run(args.run_dir)
            page = render(data, args.title)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(page, encoding="utf-8")
        except (OSError, ValueError) as err:  # FileNotFoundError, IsADirectoryError, PermissionError, ...
            if isinstance(err, OSError) and err.strerror:  # raised by the OS: say which file
                msg = f"{err.strerror}: {err.filename!r}" if err.filename else err.strerror
            else:
                msg = str(err).removeprefix("report: ")
            msg = (msg.splitlines() or [type(err).__name__])[0]
            print(f"lightning-nas report: error: {msg}", file=sys.stderr)
            return 2
        if data.skipped:
            print(
                f"lightning-nas report: {len(data.skipped)} item(s) of the run skipped (listed under 'Not shown' "
                f"in the page), e.g. {data.skipped[0]}",
                file=sys.stderr,
            )
        print(f"report: {out}")
        return 0

    return run


def _add_search(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("search", help="start one multi-trial search worker (many may share --storage)")
    p.add_argument("--config", required=True, help="YAML: build, datamodule, objectives, n_trials, strategy, ...")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL: sqlite:///f.db, postgresql://..., "
        "journal:///f.log (default: the config's, else in memory)",
    )
    p.add_argument("--study", default=None, help="study name shared by the workers (default: the config's)")
    p.add_argument("--n-trials", type=int, default=None, help="override the study's total trial budget")

    def run(args: argparse.Namespace) -> int:
        from lightning_nas.search.multitrial._config import run_config
        from lightning_nas.search.multitrial._storage import StorageUnreachableError

        try:
            result = run_config(args.config, storage=args.storage, study_name=args.study, n_trials=args.n_trials)
        except (ValueError, TypeError, StorageUnreachableError) as exc:
            print(f"lightning-nas search: error: {exc}", file=sys.stderr)
            return 2
        states = [t.state.name for t in result.study.trials]
        print(
            f"study {result.study.study_name!r}: {states.count('COMPLETE')} complete, {states.count('PRUNED')} "
            f"pruned, {states.count('FAIL')} failed; best {result.best_values} with {result.best_params}"
        )
        return 0

    return run


_COMMANDS: dict[str, Callable] = {"demo": _add_demo, "search": _add_search, "serve": _add_serve, "report": _add_report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-nas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {name: add(sub) for name, add in _COMMANDS.items()}
    args = parser.parse_args(argv)
    from lightning_nas._optional import MissingExtraError

    try:
        return runners[args.command](args)
    except MissingExtraError as exc:  # one line naming the extra to install, no traceback
        print(f"lightning-nas {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
