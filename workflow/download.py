"""Download one raw data file: HTTP(S) / file:// / local folder, resume, verify, atomic.

Flow of :func:`download` (the only thing the rules call, through the CLI below):

1. ``dest.part`` (same folder as ``dest``) collects the bytes. If it exists from an
   interrupted earlier attempt, the download resumes from its size with an HTTP
   ``Range: bytes=N-`` request; a server that ignores ``Range`` (status 200 instead of
   206) makes us start over from byte 0.
2. Connection errors, timeouts, truncated bodies, HTTP 429 and 5xx are retried with
   exponential backoff (``backoff * 2**attempt`` seconds); other HTTP errors are not.
3. The finished partial file is checked against ``expected_bytes`` and ``sha256``
   (:func:`workflow.core.io.sha256_file`); on a mismatch the partial is deleted and
   :class:`ChecksumError` / :class:`SizeError` names the URL and both values, so nothing
   is left at ``dest``.
4. ``os.replace(dest.part, dest)``: ``dest`` appears complete or not at all.

Mirrors: :func:`mirror_url` maps ``(mirror, source, filename)`` to
``{mirror}/{source}/{filename}`` (the layout of a local copy such as ``../shared/data``);
a mirror may be an ``http(s)://`` or ``file://`` base URL or a plain folder path.

CLI::

    python -m workflow.download --source tinyshakespeare --file input.txt \\
        --out data/raw/tinyshakespeare/input.txt [--mirror M] [--options-json '{}']

Without ``--mirror`` the mirror comes from the environment: ``STAGERUN_MIRRORS``, a JSON
object ``{source: mirror or null}`` (rules/env.smk sets it at parse time from the
study config, so that the mirror never becomes part of a job's parameters, command or
cache key; a source listed with null means the public URL), else ``STAGERUN_MIRROR``.
Exit status 1 with a one-line ``error: ...`` on failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from workflow.data.fetch import MIRROR_ENV, MIRRORS_ENV, DownloadError, download, env_mirror, fetch_source_file


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m workflow.download", description=__doc__.split("\n")[0])
    parser.add_argument("--source", help="source name in workflow.data.registry.SOURCES")
    parser.add_argument("--file", help="file name within the source")
    parser.add_argument("--url", help="download this URL instead of a registry file")
    parser.add_argument("--sha256", help="expected sha256 (with --url)")
    parser.add_argument("--bytes", type=int, help="expected size (with --url)")
    parser.add_argument("--out", required=True, help="destination path")
    parser.add_argument("--mirror", default=None,
                        help=f"mirror base (default: the source's entry in ${MIRRORS_ENV}, else ${MIRROR_ENV})")
    parser.add_argument("--options-json", default="{}", help="per-dataset options (size/hash overrides)")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--backoff", type=float, default=1.0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        options = json.loads(args.options_json)
        if args.url:
            download(args.url, args.out, sha256=args.sha256, expected_bytes=args.bytes,
                     retries=args.retries, timeout=args.timeout, backoff=args.backoff,
                     progress=not args.no_progress)
        elif args.source and args.file:
            mirror = args.mirror if args.mirror is not None else env_mirror(args.source)
            fetch_source_file(args.source, args.file, args.out, mirror=mirror, options=options,
                              retries=args.retries, timeout=args.timeout, backoff=args.backoff,
                              progress=not args.no_progress)
        else:
            parser.error("give --source and --file, or --url")
    except (DownloadError, KeyError, ValueError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
