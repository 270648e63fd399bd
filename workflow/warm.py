"""warm: split from workflow/jobs/warm_server.py."""

from __future__ import annotations

import argparse
import sys

from workflow.jobs.warm_server import Server


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``serve``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m workflow.warm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the warm server (Snakefile's onstart does this)")
    serve.add_argument("--socket", required=True, help="Unix socket path (created when ready)")
    serve.add_argument("--parent", type=int, help="pid of the process the server serves (default: its parent); "
                       "the server stops when that process is gone")
    args = parser.parse_args(argv)
    return Server(args.socket, args.parent).serve()


if __name__ == "__main__":
    sys.exit(main())
