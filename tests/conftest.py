"""Shared fixtures: a real loopback HTTP server (Range, HEAD, fault injection) over real files.

* ``repo_root``: the repository folder.
* ``shared_data``: the folder of real public test data (``../shared/data`` next to the
  repo, or ``$STAGERUN_SHARED_DATA``); tests skip if it is missing.
* ``shared_data_server`` (session): base URL ``http://127.0.0.1:PORT`` serving
  ``shared_data`` with the mirror layout ``/{source}/{filename}``; use it as ``mirror``.
* ``cluster_data_server`` (session): the same server on the SLURM controller's address
  (:func:`controller_address`), which the CI cluster's nodes (own network namespaces) reach.
* ``file_server``: factory ``file_server(folder, cut_after=None, ignore_range=False,
  hf_repo=None)`` -> :class:`FileServer` over any folder, with fault injection:
  ``cut_after=N`` closes the connection after N body bytes on the first GET of each
  path; ``ignore_range`` answers 200 with the whole file to Range requests; ``hf_repo``
  additionally serves ``/datasets/{hf_repo}/resolve/{revision}/{file}`` like the
  Hugging Face Hub (``X-Repo-Commit``, ``ETag``, ``X-Linked-Size`` headers).
* ``module_file_server``: the same factory, module-scoped (servers for module fixtures).
* ``tiny_study_run`` (session): tests/configs/tiny.yaml run once by the repository's Snakefile
  (:func:`run_snakemake`), then its HTML report built: ``(workdir, results, mirror, report)``.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_STUDY = REPO_ROOT / "tests" / "configs" / "tiny.yaml"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def shared_data_dir() -> Path:
    """``$STAGERUN_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("STAGERUN_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class FileServer:
    """A running loopback server; ``requests`` logs (method, path, Range header, status)."""

    folder: Path
    url: str
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread
    requests: list = field(default_factory=list)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _make_handler(folder: Path, log: list, cut_after: int | None, ignore_range: bool, hf_repo: str | None):
    cut_done: set[str] = set()
    lock = threading.Lock()
    hf_prefix = re.compile(rf"^/datasets/{re.escape(hf_repo)}/resolve/[^/]+/(.+)$") if hf_repo else None

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _resolve(self) -> tuple[Path | None, bool]:
            path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
            is_hf = False
            if hf_prefix is not None and (m := hf_prefix.match(path)):
                path, is_hf = "/" + m.group(1), True
            target = (folder / path.lstrip("/")).resolve()
            if folder.resolve() not in target.parents or not target.is_file():
                return None, is_hf
            return target, is_hf

        def _send(self, head_only: bool) -> None:
            target, is_hf = self._resolve()
            range_header = self.headers.get("Range")
            if target is None:
                log.append((self.command, self.path, range_header, 404))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = target.stat().st_size
            start, end, status = 0, size - 1, 200
            if range_header and not ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    status = 206
                    if start >= size:
                        log.append((self.command, self.path, range_header, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
            length = end - start + 1
            log.append((self.command, self.path, range_header, status))
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            if is_hf:
                etag = hashlib.sha256(target.read_bytes()).hexdigest()
                self.send_header("X-Repo-Commit", FAKE_COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(size))
            self.end_headers()
            if head_only:
                return
            limit = length
            with lock:
                key = self.path
                if cut_after is not None and key not in cut_done:
                    cut_done.add(key)
                    limit = min(length, cut_after)
            with open(target, "rb") as handle:
                handle.seek(start)
                remaining = limit
                while remaining > 0:
                    chunk = handle.read(min(65536, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
            if limit < length:  # fault injection: drop the connection mid-body
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

        def do_GET(self):
            self._send(head_only=False)

        def do_HEAD(self):
            self._send(head_only=True)

    return Handler


def start_file_server(folder: str | os.PathLike, *, cut_after: int | None = None, ignore_range: bool = False,
                      hf_repo: str | None = None, host: str = "127.0.0.1") -> FileServer:
    """Serve ``folder`` on ``host`` (default 127.0.0.1; random port) in a daemon thread; see the
    module docstring. Another address is for clients in other network namespaces (the SLURM
    CI nodes reach this machine on their bridge's address)."""
    folder = Path(folder)
    log: list = []
    server = http.server.ThreadingHTTPServer((host, 0), _make_handler(folder, log, cut_after, ignore_range, hf_repo))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    return FileServer(folder, f"http://{host}:{port}", server, thread, log)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder with the Snakefile)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real public test data (read-only; never copy it into the repo)."""
    folder = shared_data_dir()
    if not (folder / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"shared test data not found at {folder} (set STAGERUN_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def shared_data_server(shared_data):
    """Base URL of a loopback HTTP server over the shared data (mirror layout {source}/{file})."""
    srv = start_file_server(shared_data)
    yield srv.url
    srv.stop()


def controller_address() -> str:
    """The address the compute nodes reach this machine on: the one in ``SlurmctldHost=host(ADDR)``
    (the CI cluster's bridge), else 127.0.0.1 (a cluster whose nodes share this network)."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20,
                         check=False).stdout
    found = re.search(r"^SlurmctldHost\[0\]\s*=\s*\S+\(([^)]+)\)", out, re.MULTILINE)
    return found.group(1) if found else "127.0.0.1"


@pytest.fixture(scope="session")
def cluster_data_server(shared_data):
    """Base URL of a server of the shared data that jobs on the cluster's nodes can reach (mirror)."""
    srv = start_file_server(shared_data, host=controller_address())
    yield srv.url
    srv.stop()


def _file_server_factory():
    servers: list[FileServer] = []

    def make(folder, **kwargs) -> FileServer:
        srv = start_file_server(folder, **kwargs)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def file_server():
    """Factory: ``file_server(folder, cut_after=None, ignore_range=False, hf_repo=None) -> FileServer``."""
    yield from _file_server_factory()


@pytest.fixture(scope="module")
def module_file_server():
    """Like ``file_server`` but the servers live until the end of the test module (for module fixtures)."""
    yield from _file_server_factory()


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (tiny models run fastest so and do not stall on a
    shared, oversubscribed 2-core machine); the previous setting is restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shakespeare_char_meta(tmp_path_factory, shared_data) -> Path:
    """meta.json of tiny Shakespeare tokenized at character level by the real tokenize CLI."""
    out = tmp_path_factory.mktemp("tok") / "shakespeare_char"
    subprocess.run(
        [sys.executable, "-m", "workflow.tokenize", "--dataset", "shakespeare_char",
         "--raw-dir", str(shared_data / "tinyshakespeare"), "--out-dir", str(out)],
        check=True, capture_output=True, cwd=REPO_ROOT, timeout=120,
    )
    return out / "meta.json"


@pytest.fixture(scope="session")
def gpt2_ranks(shared_data) -> Path:
    """Path of the real GPT-2 BPE ranks (tiktoken r50k_base.tiktoken) in the shared data."""
    return shared_data / "gpt2" / "r50k_base.tiktoken"


@pytest.fixture
def raw_copy(tmp_path, shared_data):
    """``raw_copy(source, *files)``: copy shared files to ``tmp_path/data/raw/{source}/`` (test-local, deleted after)."""

    def make(source: str, *files: str) -> Path:
        dest = tmp_path / "data" / "raw" / source
        dest.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(shared_data / source / name, dest / name)
        return dest

    return make


def run_snakemake(workdir: Path, *args: str, configfiles=(TINY_STUDY,), mirror: str | None = None, check: bool = True,
                  timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` (its own .snakemake, data/ and results/);
    jobs call the ``python`` / ``torchrun`` of this interpreter's environment."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir)]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    if mirror:
        cmd += ["--config", f"mirror={mirror}"]
    cmd += list(args)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_study_run(tmp_path_factory, shared_data_server):
    """The tiny study run once per session, and its report (the documented command,
    ``snakemake --report results/<study>/report.html`` with the run's config flags) built
    before any test changes the study: ``(workdir, results folder, mirror URL, report path)``."""
    workdir = tmp_path_factory.mktemp("tiny_study")
    run_snakemake(workdir, "--cores", "2", mirror=shared_data_server)
    results = workdir / "results" / "tiny"
    report = results / "report.html"
    run_snakemake(workdir, "--report", str(report), mirror=shared_data_server)
    return workdir, results, shared_data_server, report


def pytest_collection_modifyitems(config, items):
    """Mark every test by its folder: ``-m unit`` (tests/unit/) or ``-m integration`` (tests/integration/)."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def full_disk_folder(tmp_path):
    """A 256 KiB tmpfs mounted at ``tmp_path/small`` for the test (a disk that fills): real
    ENOSPC, unmounted afterwards. Skips without root or where tmpfs cannot be mounted."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=True)
