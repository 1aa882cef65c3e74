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


def _add_search(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("search", help="start one multi-trial search worker (many may share --storage)")
    p.add_argument("--config", required=True, help="YAML: build, datamodule, objectives, n_trials, strategy, ...")
    p.add_argument("--storage", default=None, help="Optuna storage URL: sqlite:///f.db, postgresql://..., "
                   "journal:///f.log (default: the config's, else in memory)")
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
        print(f"study {result.study.study_name!r}: {states.count('COMPLETE')} complete, {states.count('PRUNED')} "
              f"pruned, {states.count('FAIL')} failed; best {result.best_values} with {result.best_params}")
        return 0

    return run


_COMMANDS: dict[str, Callable] = {"demo": _add_demo, "search": _add_search}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-nas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {name: add(sub) for name, add in _COMMANDS.items()}
    args = parser.parse_args(argv)
    return runners[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
