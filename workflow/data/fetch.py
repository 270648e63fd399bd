"""Download one raw data file: HTTP(S) / file:// / local folder, resume, verify, atomic.

The library part; the CLI is ``python -m workflow.download`` (workflow/download.py).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from workflow.core.io import sha256_file
from workflow.data.registry import SOURCES, source_file

CHUNK_BYTES = 1 << 20
# Body chunk size: bytes received in a chunk that the connection loses are lost, so it
# bounds how much a resume has to fetch again.
STREAM_CHUNK_BYTES = 64 << 10
USER_AGENT = "stagerun-download/0.1 (+https://github.com/; requests)"
MIRROR_ENV = "STAGERUN_MIRROR"
MIRRORS_ENV = "STAGERUN_MIRRORS"


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or a non-retryable HTTP status)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256 (message: url, expected, actual)."""


class SizeError(DownloadError):
    """The downloaded file does not have the expected number of bytes."""


class _Retryable(Exception):
    """Internal: a transient failure worth another attempt (``host``: the host name that did not
    resolve, when that was the failure)."""

    def __init__(self, message: str, host: str | None = None):
        super().__init__(message)
        self.host = host


#: Attempts for a host name that does not resolve: one retry (a DNS hiccup); a machine without
#: network does not get one within the backoff of the other failures.
DNS_RETRIES = 1


def unresolved_host(err: BaseException) -> str | None:
    """The host name a requests / urllib3 error failed to resolve (DNS), None for other errors."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return getattr(e, "host", None) or getattr(getattr(e, "conn", None), "host", None) or "?"
        if isinstance(e, socket.gaierror):
            return "?"
        stack += [e.__cause__, e.__context__, getattr(e, "reason", None),
                  *[a for a in e.args if isinstance(a, BaseException)]]
    return None


def mirror_hint(url: str, host: str | None) -> str:
    """The end of a download error for a host that does not resolve: where the ``mirror`` setting goes."""
    name = host if host and host != "?" else urllib.parse.urlparse(url).hostname
    return (f"cannot resolve the host {name!r} (no network here, or a wrong host name): download the file "
            "elsewhere and give its folder as the mirror, snakemake --config mirror=FOLDER (FOLDER/<source>/<file>, "
            f"e.g. FOLDER/tinyshakespeare/input.txt), or set ${MIRROR_ENV}=FOLDER")


def part_path(dest: str | os.PathLike) -> Path:
    """The partial-download file of ``dest``: ``dest`` + ``.part`` in the same folder."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def is_local(location: str) -> bool:
    """True for a ``file://`` URL or a plain path (anything that is not http/https)."""
    return urllib.parse.urlparse(location).scheme.lower() not in ("http", "https")


def local_path(location: str) -> Path:
    """Filesystem path of a ``file://`` URL or of a plain path string.

    Raises:
        DownloadError: ``location`` is a URL with a scheme other than ``file``.
    """
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"{location}: file:// URLs with a host ({parsed.netloc!r}) are not supported")
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # 1 letter: a Windows drive
        raise DownloadError(f"{location}: unsupported URL scheme {parsed.scheme!r} (use http, https, file or a path)")
    return Path(location)


def mirror_url(mirror: str, source: str, filename: str) -> str:
    """Location of ``filename`` of ``source`` below a mirror: ``{mirror}/{source}/{filename}``.

    Args:
        mirror: ``http(s)://host/base``, ``file:///folder`` or a folder path.
        source: source name (a key of :data:`workflow.data.registry.SOURCES`).
        filename: file name within the source.
    Returns:
        A URL for URL mirrors, a path string for folder mirrors.
    """
    scheme = urllib.parse.urlparse(mirror).scheme.lower()
    if scheme in ("http", "https", "file"):
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(source)}/{urllib.parse.quote(filename)}"
    return str(Path(mirror).expanduser() / source / filename)


def _verify(url: str, path: Path, sha256: str | None, expected_bytes: int | None) -> None:
    """Raise SizeError / ChecksumError (after deleting ``path``) if ``path`` does not match."""
    if expected_bytes is not None:
        actual = path.stat().st_size
        if actual != expected_bytes:
            path.unlink(missing_ok=True)
            raise SizeError(f"{url}: expected {expected_bytes} bytes, got {actual} bytes")
    if sha256 is not None:
        actual_sha = sha256_file(path)
        if actual_sha != sha256.lower():
            path.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {actual_sha}")


def _fetch_local(src: Path, part: Path, url: str, progress: bool) -> None:
    """Copy a local file into ``part`` (from scratch; local copies need no resume)."""
    if not src.is_file():
        raise DownloadError(f"{url}: no such file {src}")
    total = src.stat().st_size
    with open(src, "rb") as fin, open(part, "wb") as fout, _bar(total, 0, src.name, progress) as bar:
        for chunk in iter(lambda: fin.read(CHUNK_BYTES), b""):
            fout.write(chunk)
            bar.update(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())


def _bar(total: int | None, initial: int, name: str, progress: bool) -> tqdm:
    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
        desc=name, file=sys.stderr, disable=not progress, mininterval=1.0, leave=False,
    )


def _fetch_http_once(session: requests.Session, url: str, part: Path, timeout: float, progress: bool,
                     expected_bytes: int | None) -> None:
    """One attempt: append to ``part`` from its current size (Range), or restart on 200."""
    have = part.stat().st_size if part.exists() else 0
    if expected_bytes is not None and have == expected_bytes:
        return  # a previous attempt finished the body; verification decides
    if expected_bytes is not None and have > expected_bytes:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Retryable(f"{type(err).__name__}: {err}", unresolved_host(err)) from err
    with response:
        status = response.status_code
        if status == 416 and have:
            # Range not satisfiable: the partial is already complete (or stale); let the
            # size/sha check decide, and restart if there is nothing to check against.
            total = _content_range_total(response.headers.get("Content-Range"))
            if total is not None and total == have:
                return
            part.unlink()
            raise _Retryable(f"HTTP 416 for a resume from byte {have}; restarting from byte 0")
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status} {response.reason}")
        if status >= 400:
            raise DownloadError(f"{url}: HTTP {status} {response.reason}")
        if status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Retryable(f"server resumed at byte {start}, asked for byte {have}; restarting")
            mode = "ab"
            total = _content_range_total(response.headers.get("Content-Range"))
        else:  # 200: the server ignored Range (or we asked for none): start over
            mode, have = "wb", 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        body_expected = None if total is None else total - have
        received = 0
        with open(part, mode) as fout, _bar(total, have, Path(urllib.parse.urlparse(url).path).name, progress) as bar:
            try:
                for chunk in response.iter_content(chunk_size=STREAM_CHUNK_BYTES):
                    fout.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as err:
                raise _Retryable(f"connection lost after {have + received} bytes: {err}") from err
            finally:
                fout.flush()
                os.fsync(fout.fileno())
        if body_expected is not None and received < body_expected:
            raise _Retryable(f"body ended after {have + received} of {total} bytes")


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str | None) -> int | None:
    try:
        total = value.rsplit("/", 1)[1] if value else "*"
        return None if total == "*" else int(total)
    except (IndexError, ValueError):
        return None


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    expected_bytes: int | None = None,
    retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Download ``url`` to ``dest`` with resume, retries and verification; atomic.

    Args:
        url: ``http(s)://`` URL, ``file://`` URL or a local path.
        dest: final path; its folder is created. If ``dest`` already exists and matches
            ``sha256`` (and ``expected_bytes``), nothing is downloaded.
        sha256: expected lowercase hex sha256 of the whole file, or None (no hash check).
        expected_bytes: expected size in bytes, or None.
        retries: attempts after the first one for transient failures (connection lost,
            timeout, truncated body, HTTP 429/5xx).
        timeout: seconds for connecting and between two received chunks (requests' timeout).
        backoff: seconds before the first retry; doubled for each further retry.
        progress: show a tqdm bar on stderr.
        session: a ``requests.Session`` to reuse (default: a new one).
    Returns:
        ``Path(dest)``.
    Raises:
        ChecksumError: sha256 differs (message names url, expected and actual hashes);
            neither ``dest`` nor the partial file is left behind.
        SizeError: the size differs from ``expected_bytes`` (same cleanup).
        DownloadError: HTTP error status, missing local file, or retries exhausted (the
            partial file is kept so that a later call resumes).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if dest.exists() and (sha256 is not None or expected_bytes is not None):
        try:
            _verify(url, dest, sha256, expected_bytes)  # deletes dest on mismatch
            part.unlink(missing_ok=True)
            return dest
        except DownloadError:
            pass

    if is_local(url):
        _fetch_local(local_path(url), part, url, progress)
        _verify(url, part, sha256, expected_bytes)
        os.replace(part, dest)
        return dest

    own_session = session is None
    session = session or requests.Session()
    session.headers.setdefault("User-Agent", USER_AGENT)
    session.headers["Accept-Encoding"] = "identity"  # byte ranges refer to the stored bytes
    try:
        attempt, restarted = 0, False
        while True:
            resumed = part.exists() and part.stat().st_size > 0
            try:
                _fetch_http_once(session, url, part, timeout, progress, expected_bytes)
                _verify(url, part, sha256, expected_bytes)
                break
            except _Retryable as err:
                if err.host is not None and attempt >= min(retries, DNS_RETRIES):
                    raise DownloadError(f"{url}: giving up after {attempt + 1} attempts: "
                                        f"{mirror_hint(url, err.host)}") from None
                if attempt >= retries:
                    raise DownloadError(f"{url}: giving up after {attempt + 1} attempts: {err}") from None
                delay = backoff * (2 ** attempt)
                print(f"download {url}: {err}; retry {attempt + 1}/{retries} in {delay:.1f} s",
                      file=sys.stderr)
                time.sleep(delay)
                attempt += 1
            except (ChecksumError, SizeError):
                # A resumed file may be corrupt where a fresh download is fine: one restart.
                if resumed and not restarted:
                    restarted = True
                    continue
                raise
        with open(part, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(part, dest)
        return dest
    finally:
        if own_session:
            session.close()


def hf_download(repo_id: str, filename: str, dest: str | os.PathLike, *, repo_type: str = "dataset",
                revision: str = "main", endpoint: str | None = None,
                expected_bytes: int | None = None, sha256: str | None = None) -> Path:
    """Download one file of a Hugging Face Hub repo to ``dest`` via ``hf_hub_download``.

    The file is fetched into ``{dest.parent}/.hf/`` (huggingface_hub's own resumable,
    atomic local-dir download) and then renamed onto ``dest``, after the optional size /
    sha256 check. ``endpoint`` defaults to the environment variable ``HF_ENDPOINT`` read
    at call time (huggingface_hub reads it only at import).

    Raises:
        DownloadError: the Hub request failed (message names repo and file).
        SizeError, ChecksumError: as in :func:`download`.
    """
    from huggingface_hub import hf_hub_download  # deferred heavy import: huggingface_hub, only for hf:// sources

    dest = Path(dest)
    staging = dest.parent / ".hf"
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    try:
        got = Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type=repo_type,
                                   revision=revision, local_dir=staging, endpoint=endpoint))
    except Exception as err:  # huggingface_hub raises many types (HTTP, offline, not found)
        raise DownloadError(f"{endpoint or 'https://huggingface.co'} {repo_type} {repo_id}/{filename}: "
                            f"{type(err).__name__}: {err}") from err
    url = f"hf://{repo_type}s/{repo_id}/{filename}"
    _verify(url, got, sha256, expected_bytes)
    os.replace(got, dest)
    return dest


def fetch_source_file(source: str, filename: str, dest: str | os.PathLike, *,
                      mirror: str | None = None, options: dict | None = None,
                      retries: int = 5, timeout: float = 30.0, backoff: float = 1.0,
                      progress: bool = True) -> Path:
    """Download ``filename`` of registry source ``source`` to ``dest`` (what the rule runs).

    Looks up url / sha256 / bytes with :func:`workflow.data.registry.source_file`; with a
    ``mirror`` the file comes from :func:`mirror_url` instead of the public URL. Hugging
    Face sources without a mirror go through :func:`hf_download`.

    Raises:
        KeyError: unknown source or file (message lists the known names).
        DownloadError (and subclasses): see :func:`download`.
    """

    spec = source_file(source, filename, options or {})
    src = SOURCES[source]
    if mirror:
        return download(mirror_url(mirror, source, filename), dest, sha256=spec.sha256,
                        expected_bytes=spec.bytes, retries=retries, timeout=timeout,
                        backoff=backoff, progress=progress)
    if src.hf_repo is not None:
        return hf_download(src.hf_repo, filename, dest, repo_type=src.hf_repo_type,
                           expected_bytes=spec.bytes, sha256=spec.sha256)
    return download(spec.url, dest, sha256=spec.sha256, expected_bytes=spec.bytes,
                    retries=retries, timeout=timeout, backoff=backoff, progress=progress)


def env_mirror(source: str) -> str | None:
    """Mirror of ``source`` from the environment: ``$STAGERUN_MIRRORS`` (JSON ``{source: mirror
    or null}``; a listed source wins, null = public URL), else ``$STAGERUN_MIRROR``, else None.

    Raises:
        ValueError: ``STAGERUN_MIRRORS`` is not a JSON object (message names the variable).
    """
    raw = os.environ.get(MIRRORS_ENV)
    if raw:
        try:
            mirrors = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"${MIRRORS_ENV}: invalid JSON at column {err.colno}: {err.msg}") from None
        if not isinstance(mirrors, dict):
            raise ValueError(f"${MIRRORS_ENV}: expected a JSON object {{source: mirror}}, got {type(mirrors).__name__}")
        if source in mirrors:
            return mirrors[source] or None
    return os.environ.get(MIRROR_ENV) or None
