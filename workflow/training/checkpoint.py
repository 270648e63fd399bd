"""Per-rank checkpoints in two slots, safe to load from a shared results folder.

Layout in a run folder::

    checkpoint/a/rank-0.pt  rank-1.pt ...  manifest.json
    checkpoint/b/rank-0.pt  rank-1.pt ...  manifest.json

Every rank saves its own state (model or shard, optimizers, strategy buffers, RNG): workers
whose models differ (DiLoCo mid-round, gossip, tensor-parallel shards) all resume exactly.

Writing alternates between the slots, so the previous checkpoint stays intact until the new one
is complete: the target slot's manifest is removed first, every rank writes its file
atomically (temp file + rename) and records its sha256 in a sidecar, and only then rank 0
writes the slot's ``manifest.json`` (step, world size, config hash, seed, every file's sha256).
A slot without a manifest is incomplete and never loaded.

Loading never runs code: files are read with ``torch.load(weights_only=True)``, which accepts
only tensors, plain containers, numbers and strings (a planted pickle fails to load and is
reported, its code never runs). A file that fails to load or whose sha256 differs from the
manifest makes the ranks fall back to the other slot, then to a fresh start; every outcome is
logged with the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from workflow.core.io import atomic_write, read_json, sha256_file, write_json_atomic

CHECKPOINT_VERSION = 3
SLOTS = ("a", "b")


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoint"


def _manifest(slot_dir: Path) -> dict | None:
    path = slot_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def slots_newest_first(out_dir: Path) -> list[tuple[Path, dict]]:
    """(slot folder, manifest) of every complete slot, newest step first."""
    found = [(checkpoint_dir(out_dir) / s, m) for s in SLOTS if (m := _manifest(checkpoint_dir(out_dir) / s))]
    return sorted(found, key=lambda item: item[1].get("step", -1), reverse=True)


def save(out_dir: Path, rank: int, world_size: int, state: dict, identity: dict,
         barrier: Callable[[], None]) -> Path:
    """Write this rank's ``state`` into the slot not holding the newest checkpoint.

    Args:
        out_dir: the run folder.
        rank, world_size: this process and the job size (one file per rank).
        state: this rank's state (tensors, plain containers, numbers, strings only).
        identity: ``{"config_hash", "seed", "step"}`` written into the manifest.
        barrier: a barrier over all ranks (counted by the caller's CommCounter).
    Returns:
        the slot folder written.
    """
    newest = slots_newest_first(out_dir)
    target = next(s for s in SLOTS if not newest or checkpoint_dir(out_dir) / s != newest[0][0])
    slot_dir = checkpoint_dir(out_dir) / target
    if rank == 0:
        (slot_dir / "manifest.json").unlink(missing_ok=True)  # the slot is incomplete from here on
        slot_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    path = slot_dir / f"rank-{rank}.pt"
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)
    (slot_dir / f"rank-{rank}.sha256").write_text(sha256_file(path) + "\n")
    barrier()
    if rank == 0:
        files = {}
        for r in range(world_size):
            files[f"rank-{r}.pt"] = (slot_dir / f"rank-{r}.sha256").read_text().strip()
        write_json_atomic(slot_dir / "manifest.json", {
            "version": CHECKPOINT_VERSION, "world_size": world_size, "files": files, **identity,
        })
    barrier()
    return slot_dir


def load(out_dir: Path, rank: int, world_size: int, identity: dict, device: torch.device,
         all_ok: Callable[[bool], bool], log: Callable[[str], None]) -> dict | None:
    """This rank's state from the newest slot every rank can read, or None (start afresh).

    A slot is used only if its manifest matches ``identity`` (config hash and seed), the
    version and the world size, and EVERY rank loads its file with ``weights_only=True`` and the
    file's sha256 matches the manifest (``all_ok`` combines the ranks' verdicts). Otherwise the
    next slot is tried; each rejection is logged with the path and the reason.
    """
    if not checkpoint_dir(out_dir).exists():
        return None
    legacy = Path(out_dir) / "checkpoint.pt"
    if legacy.exists():
        log(f"ignoring {legacy}: a checkpoint of an older trainer (never loaded: it may hold code)")
    candidates = slots_newest_first(out_dir)
    for slot_dir, manifest in candidates:
        reason = None
        if manifest.get("version") != CHECKPOINT_VERSION:
            reason = f"checkpoint version {manifest.get('version')} != {CHECKPOINT_VERSION}"
        elif manifest.get("config_hash") != identity["config_hash"] or manifest.get("seed") != identity["seed"]:
            reason = "it belongs to another config or seed"
        elif manifest.get("world_size") != world_size:
            reason = f"it was written by {manifest.get('world_size')} processes, this run has {world_size}"
        state = None
        if reason is None:
            path = slot_dir / f"rank-{rank}.pt"
            try:
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if digest != manifest["files"].get(path.name):
                    raise ValueError(f"sha256 {digest} differs from the manifest's {manifest['files'].get(path.name)}")
                state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
            except Exception as err:  # noqa: BLE001 (any failure to read means: do not use it)
                reason = f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''})"
        if all_ok(reason is None):
            return state
        log(f"ignoring checkpoint {slot_dir}: {reason or 'another rank could not read its file'}; "
            + ("falling back to the previous checkpoint" if (slot_dir, manifest) != candidates[-1] else "starting afresh"))
    return None


def remove(out_dir: Path) -> None:
    """Delete the run's checkpoints (after a finished run: the final model is model.pt)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(checkpoint_dir(out_dir))


def save_final_model(path: Path, model_state: dict, model_config: dict, extra: dict[str, Any]) -> None:
    """The finished run's scored model for sampling: ``{"model", "model_config", **extra}``,
    loadable with ``weights_only=True``."""
    with atomic_write(path, "wb") as handle:
        torch.save({"model": model_state, "model_config": model_config, **extra}, handle)
