"""`python -m mmlens <command>`: the notebooks' stage functions, headless.

    python -m mmlens 01                 # download + convert (sample: from the local mirror)
    python -m mmlens 03 -o batch_size=16 -o shard="(0, 2)"
    python -m mmlens all                # 01..09 in order (10 runs the real-data protocol alone)
    python -m mmlens demo --out runs/demo   # execute every notebook, print the metrics table
    python -m mmlens serve              # run the sample mirror in the foreground
    python -m mmlens export [--check]   # notebooks' #@save cells -> src/mmlens/_nb/ (or compare)

Global options (``--data-dir``, ``--dataset``, ``--profile``, ``--seed``, ``--device``) override the
``MMLENS_*`` environment variables; ``-o key=value`` passes a keyword option to the stage function
(values are Python literals, else strings).

A problem the user can fix (:class:`mmlens.errors.UserError`, a missing input of an earlier
notebook, a misspelt option) is printed as one line, ``error: ...``, with exit status 2; a bug keeps
its traceback.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from mmlens.config import Config
from mmlens.errors import UserError

# stage -> (module, function): the same callables the notebooks use.
STAGES: dict[str, tuple[str, str]] = {
    "01": ("mmlens.movielens", "run"),
    "02": ("mmlens.enrich", "run"),
    "03": ("mmlens.features.image", "run"),
    "04": ("mmlens.features.text", "run"),
    "05": ("mmlens.feature_store", "run"),
    "06": ("mmlens.etl", "run"),
    "07": ("mmlens.train.hugectr_script", "run"),
    "08": ("mmlens.train", "run_keras"),
    "09": ("mmlens.train.ablation", "run"),
    "10": ("mmlens.protocol", "run"),  # real ml-latest-small from datasets/, whatever --dataset
}
# Stage functions that forward ``**options``: the function whose signature lists them.
OPTIONS_OF: dict[str, tuple[str, str]] = {"08": ("mmlens.train.keras_train", "run")}


DEMO_PROTOCOL_SETTINGS = ("MMLENS_PROTOCOL_SEEDS", "MMLENS_PROTOCOL_EPOCHS")
PIPELINE = tuple(s for s in STAGES if s != "10")  # `all`: the series on one dataset, 01..09


def stage_function(stage: str) -> Callable[..., Any]:
    """The function that runs ``stage`` (imported lazily: stages pull in heavy libraries)."""
    module, name = STAGES[stage]
    return getattr(importlib.import_module(module), name)


def _option_parameters(stage: str) -> list[inspect.Parameter]:
    module, name = OPTIONS_OF.get(stage, STAGES[stage])
    function = getattr(importlib.import_module(module), name)
    return list(inspect.signature(function).parameters.values())[1:]  # the first is the Config


def stage_options(stage: str) -> list[str]:
    """The keyword options (``-o key=value``) that ``stage`` accepts, read from its signature."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in _option_parameters(stage) if p.kind in kinds]


def check_options(stage: str, options: dict[str, Any]) -> None:
    """Raise :class:`UserError` naming the accepted options when one in ``options`` is not (a
    stage function that takes ``**options`` unnamed in ``OPTIONS_OF`` is not checked)."""
    if not options or any(p.kind is inspect.Parameter.VAR_KEYWORD
                          for p in _option_parameters(stage)):
        return
    accepted = stage_options(stage)
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            guess = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"stage {stage} has no option {key!r}{guess}; its options: "
                            f"{', '.join(accepted) or 'none'}")


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with value parsed as a Python literal when possible."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


class _Parser(argparse.ArgumentParser):
    """Usage errors become a :class:`UserError` (one line, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (python -m mmlens --help lists the commands and options)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mmlens", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=[*STAGES, "all", "demo", "notebooks", "world", "serve",
                                              "export"])
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--dataset")
    p.add_argument("--profile", dest="sample_profile")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("-o", "--option", action="append", type=parse_option, default=[],
                   help="stage keyword option key=value (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo: output directory")
    p.add_argument("--in-place", action="store_true", help="notebooks: refresh committed outputs")
    p.add_argument("--check", action="store_true", help="export: only report stale exports")
    return p


def run_stage(cfg: Config, stage: str, **options: Any) -> Any:
    """Run one stage with timing output."""
    start = time.perf_counter()
    print(f"== stage {stage} ({cfg.dataset}, {cfg.dataset_dir})", flush=True)
    result = stage_function(stage)(cfg, **options)
    print(f"== stage {stage} done in {time.perf_counter() - start:.1f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error (a bad option or input, a missing input artifact, an
    unreachable host) is printed in one line with exit status 2, a bug with its traceback."""
    try:
        return _dispatch(_parser().parse_args(argv))
    except UserError as err:  # MissingArtifactError included
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    cfg = Config.from_env(
        data_dir=args.data_dir, dataset=args.dataset, sample_profile=args.sample_profile,
        seed=args.seed, device=args.device,
    )
    options = dict(args.option)
    if options and args.command not in STAGES:
        raise UserError(f"-o options go to one numbered stage (01..10), not to {args.command!r}")
    if args.command in STAGES:
        check_options(args.command, options)
        run_stage(cfg, args.command, **options)
    elif args.command == "all":
        for stage in PIPELINE:
            run_stage(cfg, stage)
    elif args.command in ("demo", "notebooks"):
        return _notebooks(cfg, args)
    elif args.command == "world":
        from mmlens.sample import ensure_world

        print(ensure_world(cfg))
    elif args.command == "serve":
        _serve(cfg)
    elif args.command == "export":
        return _export(args.check)
    return 0


def _export(check: bool) -> int:
    from mmlens.export import export

    changed = export(check=check)
    for p in changed:
        print(f"{'stale' if check else 'wrote'} {p.relative_to(p.parents[3])}")
    if check and changed:
        print("the notebooks' #@save cells and src/mmlens/_nb/ differ: run `make export`",
              file=sys.stderr)
        return 1
    return 0


def _notebooks(cfg: Config, args: argparse.Namespace) -> int:
    from mmlens import notebooks

    if args.in_place:
        # committed outputs come from a clean data directory: every stage visibly does its work
        data_dir = args.data_dir or Path("runs/notebooks/data")
        if args.data_dir is None:  # never delete a directory the user named
            shutil.rmtree(data_dir, ignore_errors=True)
        notebooks.run_all(None, notebooks.sample_env(data_dir, cfg.sample_profile), in_place=True)
        return 0
    out: Path = args.out
    data_dir = args.data_dir or out / "data"
    env = notebooks.sample_env(data_dir, cfg.sample_profile)
    # the demo's notebook 10 trains one seed for one epoch (the committed output: 3 seeds, all)
    env.update({k: os.environ.get(k, "1") for k in DEMO_PROTOCOL_SETTINGS})
    timings = notebooks.run_all(out / "notebooks", env)
    summary = notebooks.summary(Path(env["MMLENS_DATA_DIR"]), cfg.sample_profile, timings)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nexecuted notebooks and summary in {out}/")
    return 0


def _serve(cfg: Config) -> None:
    from mmlens.sample import serve_sample_world

    with serve_sample_world(cfg) as mirror:
        print(f"sample mirror at {mirror.url} (Ctrl-C to stop)")
        print(f"  MovieLens base URL: {mirror.movielens_base_url}")
        print(f"  TMDB API base:      {mirror.tmdb_api_base}")
        print(f"  IMDb base:          {mirror.imdb_base}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
