"""workflow.download over a real loopback HTTP server, file:// URLs and folder mirrors."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from workflow.data.fetch import (
    ChecksumError,
    DownloadError,
    SizeError,
    download,
    fetch_source_file,
    mirror_url,
    part_path,
)

SHAKESPEARE_SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1115394


def test_download_http_sha_ok(shared_data_server, tmp_path):
    dest = tmp_path / "raw" / "input.txt"
    got = download(f"{shared_data_server}/tinyshakespeare/input.txt", dest, sha256=SHAKESPEARE_SHA,
                   expected_bytes=SHAKESPEARE_BYTES, progress=False)
    assert got == dest
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == SHAKESPEARE_SHA
    assert not part_path(dest).exists()


def test_wrong_sha_names_both_hashes_and_leaves_nothing(shared_data_server, tmp_path):
    dest = tmp_path / "input.txt"
    wrong = "0" * 64
    url = f"{shared_data_server}/tinyshakespeare/input.txt"
    with pytest.raises(ChecksumError) as err:
        download(url, dest, sha256=wrong, progress=False, retries=0)
    message = str(err.value)
    assert url in message and wrong in message and SHAKESPEARE_SHA in message
    assert list(tmp_path.iterdir()) == []  # neither dest nor dest.part


def test_wrong_size_leaves_nothing(shared_data_server, tmp_path):
    dest = tmp_path / "input.txt"
    with pytest.raises(SizeError, match="expected 1000 bytes, got 1115394"):
        download(f"{shared_data_server}/tinyshakespeare/input.txt", dest, expected_bytes=1000, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cut_connection_is_resumed_with_range(shared_data, file_server, tmp_path):
    srv = file_server(shared_data, cut_after=300_000)
    dest = tmp_path / "input.txt"
    download(f"{srv.url}/tinyshakespeare/input.txt", dest, sha256=SHAKESPEARE_SHA, backoff=0.01, progress=False)
    assert dest.read_bytes() == (shared_data / "tinyshakespeare" / "input.txt").read_bytes()
    gets = [r for r in srv.requests if r[0] == "GET"]
    assert len(gets) == 2
    assert gets[0][2] is None and gets[0][3] == 200
    # the resume starts where the written part ended (64 KiB chunks: 4 whole chunks of 300,000 bytes)
    assert gets[1][2] == f"bytes={4 * 65536}-" and gets[1][3] == 206


def test_existing_partial_is_resumed(shared_data, file_server, tmp_path):
    original = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()
    dest = tmp_path / "input.txt"
    part_path(dest).write_bytes(original[:500_000])
    srv = file_server(shared_data)
    download(f"{srv.url}/tinyshakespeare/input.txt", dest, sha256=SHAKESPEARE_SHA, progress=False)
    assert dest.read_bytes() == original
    assert [(r[2], r[3]) for r in srv.requests] == [("bytes=500000-", 206)]


def test_server_ignoring_range_restarts_from_zero(shared_data, file_server, tmp_path):
    original = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()
    dest = tmp_path / "input.txt"
    part_path(dest).write_bytes(b"garbage that must not survive" * 100)
    srv = file_server(shared_data, ignore_range=True)
    download(f"{srv.url}/tinyshakespeare/input.txt", dest, sha256=SHAKESPEARE_SHA, progress=False)
    assert dest.read_bytes() == original
    assert srv.requests[0][2] is not None and srv.requests[0][3] == 200


def test_corrupt_partial_is_retried_fresh_once(shared_data, file_server, tmp_path):
    original = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()
    dest = tmp_path / "input.txt"
    part_path(dest).write_bytes(b"X" * 1000)  # wrong bytes, right server: resume gives a bad hash
    srv = file_server(shared_data)
    download(f"{srv.url}/tinyshakespeare/input.txt", dest, sha256=SHAKESPEARE_SHA, progress=False)
    assert dest.read_bytes() == original
    assert [(r[2], r[3]) for r in srv.requests] == [("bytes=1000-", 206), (None, 200)]


def test_http_404_is_not_retried(shared_data, file_server, tmp_path):
    srv = file_server(shared_data)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{srv.url}/nope/missing.txt", tmp_path / "x", progress=False, backoff=0.01)
    assert len(srv.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_retries_exhausted_keeps_partial(tmp_path, file_server, shared_data):
    srv = file_server(shared_data)
    srv.stop()  # nothing listens any more: connection refused every time
    with pytest.raises(DownloadError, match="giving up after 3 attempts"):
        download(f"{srv.url}/tinyshakespeare/input.txt", tmp_path / "x", retries=2, backoff=0.01,
                 timeout=2, progress=False)


def test_file_url_and_folder_mirror(shared_data, tmp_path):
    file_url = mirror_url(shared_data.as_uri(), "tinyshakespeare", "input.txt")
    assert file_url.startswith("file://") and file_url.endswith("/tinyshakespeare/input.txt")
    download(file_url, tmp_path / "a.txt", sha256=SHAKESPEARE_SHA, progress=False)
    fetch_source_file("tinyshakespeare", "input.txt", tmp_path / "b.txt", mirror=str(shared_data), progress=False)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    with pytest.raises(ChecksumError):
        download(file_url, tmp_path / "c.txt", sha256="f" * 64, progress=False)
    assert not (tmp_path / "c.txt").exists() and not part_path(tmp_path / "c.txt").exists()


def test_mirror_url_layout():
    assert mirror_url("http://h:1/base/", "multi30k", "train.en.gz") == "http://h:1/base/multi30k/train.en.gz"
    assert mirror_url("/srv/copy", "tinyshakespeare", "input.txt") == "/srv/copy/tinyshakespeare/input.txt"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "workflow.download", "--no-progress", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_cli_registry_download_via_env_mirror(shared_data_server, tmp_path, repo_root):
    out = tmp_path / "raw" / "tinyshakespeare" / "input.txt"
    proc = _cli("--source", "tinyshakespeare", "--file", "input.txt", "--out", str(out),
                env={"STAGERUN_MIRROR": shared_data_server, "PYTHONPATH": str(repo_root)})
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHAKESPEARE_SHA


def test_cli_mirror_map_from_env_wins_per_source(shared_data_server, tmp_path, repo_root):
    """STAGERUN_MIRRORS (set by rules/env.smk) names each source's mirror; a listed source
    wins over STAGERUN_MIRROR, null means the public URL, an unlisted one falls back."""
    out = tmp_path / "a" / "input.txt"
    env = {"PYTHONPATH": str(repo_root), "STAGERUN_MIRROR": str(tmp_path / "nowhere"),
           "STAGERUN_MIRRORS": json.dumps({"tinyshakespeare": shared_data_server, "gpt2": None})}
    proc = _cli("--source", "tinyshakespeare", "--file", "input.txt", "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHAKESPEARE_SHA
    proc = _cli("--source", "multi30k", "--file", "val.en.gz", "--out", str(tmp_path / "b"), env=env)
    assert proc.returncode == 1 and f"{tmp_path / 'nowhere'}/multi30k/val.en.gz: no such file" in proc.stderr
    proc = _cli("--source", "tinyshakespeare", "--file", "input.txt", "--out", str(tmp_path / "c"),
                env={**env, "STAGERUN_MIRRORS": "[1]"})
    assert proc.returncode == 1 and "$STAGERUN_MIRRORS: expected a JSON object" in proc.stderr


def test_cli_errors_are_one_line(tmp_path, repo_root):
    env = {"PYTHONPATH": str(repo_root), "STAGERUN_MIRROR": str(tmp_path)}
    proc = _cli("--source", "nosuch", "--file", "x", "--out", str(tmp_path / "x"), env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown source 'nosuch'" in proc.stderr and "tinyshakespeare" in proc.stderr
    proc = _cli("--source", "tinyshakespeare", "--file", "input.txt", "--out", str(tmp_path / "y"), env=env)
    assert proc.returncode == 1 and "no such file" in proc.stderr


def test_a_host_that_does_not_resolve_names_the_mirror_setting_in_the_last_line(repo_root, tmp_path):
    """Offline (or a mistyped host): one retry, not five, and the last line says where the mirror goes."""
    url = "http://nonexistent.invalid/tinyshakespeare/input.txt"
    out = tmp_path / "raw" / "input.txt"
    proc = subprocess.run([sys.executable, "-m", "workflow.download", "--url", url, "--out", str(out), "--retries", "5",
                           "--backoff", "0.01", "--no-progress"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: {url}: giving up after 2 attempts: cannot resolve the host 'nonexistent.invalid' (no network here, "
        "or a wrong host name): download the file elsewhere and give its folder as the mirror, snakemake --config "
        "mirror=FOLDER (FOLDER/<source>/<file>, e.g. FOLDER/tinyshakespeare/input.txt), or set $STAGERUN_MIRROR=FOLDER")
    assert sum("retry" in line for line in lines) == 1
    assert not out.exists()


def test_other_connection_failures_keep_their_retries(tmp_path):
    """A refused connection on loopback (nothing listens) is not a name problem: all retries, no mirror hint."""
    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError) as err:
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", retries=2, backoff=0.01, progress=False)
    assert "giving up after 3 attempts" in str(err.value) and "mirror" not in str(err.value)
