"""The ``lightning-nas`` command. Subcommands register themselves in ``_COMMANDS``."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _add_demo(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("demo", help="train, compress and measure a model on the bundled digits, offline")
    p.add_argument("--max-epochs", type=int, default=8, help="epochs per training stage (default 8)")
    p.add_argument("--online", action="store_true", help="sync the W&B run (needs a W&B key)")
    p.add_argument("--out", default="nas_runs/demo", help="output folder (default nas_runs/demo)")
    p.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        if args.max_epochs < 1:
            raise SystemExit(f"--max-epochs must be >= 1, got {args.max_epochs}")
        from lightning_nas.demo import run_demo

        run_demo(max_epochs=args.max_epochs, online=args.online, out_dir=args.out, seed=args.seed)
        return 0

    return run


def _add_report(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("report", help="a self-contained HTML report of a run (W&B offline run or file sink)")
    p.add_argument("run_dir", help="a W&B run or save dir, or a lightning_nas files folder (index.jsonl)")
    p.add_argument("-o", "--out", default="report.html", help="output HTML file (default report.html)")
    p.add_argument("--title", default=None, help="page title (default: from the run's name)")

    def run(args: argparse.Namespace) -> int:
        from lightning_nas.report import build_report

        try:
            path = build_report(args.run_dir, args.out, args.title)
        except FileNotFoundError as err:
            raise SystemExit(str(err)) from None
        print(f"report: {path}")
        return 0

    return run


_COMMANDS: dict[str, Callable] = {"demo": _add_demo}
_COMMANDS["report"] = _add_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-nas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {name: add(sub) for name, add in _COMMANDS.items()}
    args = parser.parse_args(argv)
    return runners[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
