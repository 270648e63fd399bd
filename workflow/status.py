"""Where a study stands, read at a glance (library: workflow/analysis/status.py).

CLI::

    python -m workflow.status [--configfile STUDY.yaml ...] [--config KEY=VALUE ...] [--directory DIR]
        [--watch [--interval 5]] [--json] [--files-only] [--stale-after 300]

``make status STUDY=...`` runs it (``ARGS=--watch`` refreshes it in place). It reads the run
folders, gates and verdict of ``{results_dir}/{study}`` under ``--directory`` (Snakemake's working
directory; default: here) and asks the scheduler (this machine's processes; ``sacct`` for the SLURM
jobs the logs name), so it works beside a running Snakemake, after a crash and before a study starts.
Exit status: 0; 1 when the study is invalid (the message names the key and file), ``--directory``
does not exist, or a file of the results is corrupt (one line each, naming the file; the table is
still printed). A missing results folder is said in one line. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.live import Live

from workflow.analysis.status import POLL_INTERVAL_S, STALE_AFTER_S, load_study, parse_config_args, render, study_status
from workflow.analysis.status_view import plain_text
from workflow.study.schema import ConfigError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workflow.status", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[],
                        help="the study file(s), as given to snakemake (default: config/config.yaml)")
    parser.add_argument("--config", "-C", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="the --config values given to snakemake (results_dir=..., set=..., ...)")
    parser.add_argument("--directory", "-d", default=".", help="snakemake's --directory (where results_dir is)")
    parser.add_argument("--watch", action="store_true", help="refresh the table in place until Ctrl-C")
    parser.add_argument("--interval", type=float, default=POLL_INTERVAL_S,
                        help=f"seconds between refreshes with --watch (default {POLL_INTERVAL_S:g})")
    parser.add_argument("--json", action="store_true", help="print the status as JSON (for scripts)")
    parser.add_argument("--files-only", action="store_true", help="read the run folders only: no processes, no sacct")
    parser.add_argument("--stale-after", type=float, default=STALE_AFTER_S,
                        help="a run without a process or SLURM job whose folder was written this many seconds "
                             f"ago still counts as running (default {STALE_AFTER_S:g})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, ValueError, OSError) as err:
        print("workflow.status: " + " ".join(str(err).split()), file=sys.stderr)
        return 1
    except Exception as err:  # never a traceback: one line, with where it came from
        frame = traceback.extract_tb(err.__traceback__)[-1]
        print(f"workflow.status: {type(err).__name__}: {err} (in {Path(frame.filename).name}, line {frame.lineno}; "
              "a file of the results may be corrupt)".replace("\n", " "), file=sys.stderr)
        return 1


def _problems(status: dict) -> int:
    """Print the status's problems (corrupt files, a missing results folder) one line each."""
    for line in status.get("problems") or []:
        print(f"workflow.status: {line}", file=sys.stderr)
    return 1 if any("corrupt" in line for line in status.get("problems") or []) else 0


def _main(args: argparse.Namespace) -> int:
    config = load_study(args.configfile, parse_config_args(args.config), args.directory)

    def collect() -> dict:
        return study_status(config, args.directory, scheduler=not args.files_only, stale_after_s=args.stale_after)

    if args.json:
        status = collect()
        print(json.dumps(status, indent=1))
        return _problems(status)
    if args.watch and not sys.stdout.isatty():
        print("workflow.status: --watch needs a terminal; printing the status once", file=sys.stderr)
        args.watch = False
    status = collect()
    if not args.watch:
        if sys.stdout.isatty():
            Console().print(render(status))
        else:  # piped: plain lines without the padding to the table width
            sys.stdout.write(plain_text(render(status)))
        return _problems(status)
    console = Console()
    try:
        with Live(render(status, args.interval), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                status = collect()
                live.update(render(status, args.interval), refresh=True)
    except KeyboardInterrupt:
        pass
    return _problems(status)  # the last refresh's, once the table stops


if __name__ == "__main__":
    sys.exit(main())
