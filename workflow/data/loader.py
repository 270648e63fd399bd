"""Memory-mapped token splits and deterministic batch sampling for the trainer.

A split is one or more token files described in a dataset's ``meta.json``
(see docs/architecture.md): each file is ``header_bytes`` of header then ``tokens``
values of ``dtype``. Files are opened with ``numpy.memmap``, so a split of any size
costs no memory until windows are read. Training windows never cross file boundaries.

Sampling is a pure function of ``(seed, step)``: the *global* batch of a step is drawn
from ``numpy.random.default_rng([seed, step])`` and each rank takes its contiguous
slice. So the data a run sees does not depend on the number of processes, and a
resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workflow.core.io import read_json


@dataclass(frozen=True)
class _TokenFile:
    path: Path
    tokens: np.ndarray  # 1-D memmap of the file's tokens


class TokenSplit:
    """One split (``train``/``val``/``test``) of a tokenized dataset, memory-mapped.

    Args:
        meta_path: the dataset's ``meta.json``.
        split: split name, a key of ``meta["splits"]``.
    Raises:
        KeyError: the split is not in meta.json (message lists the splits it has).
        ValueError: a file's size disagrees with ``header_bytes + tokens * itemsize``
            (message names the file and both sizes).
    """

    def __init__(self, meta_path: str | os.PathLike, split: str):
        self.meta_path = Path(meta_path)
        meta = read_json(self.meta_path)
        self.meta = meta
        if split not in meta.get("splits", {}):
            raise KeyError(f"{self.meta_path}: no split {split!r} (has: {', '.join(meta.get('splits', {}))})")
        self.split = split
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        self.vocab_size = int(meta["vocab_size"])
        self.files: list[_TokenFile] = []
        for entry in meta["splits"][split]["files"]:
            path = Path(entry["path"])
            if not path.is_absolute():
                path = self.meta_path.parent / path
            header, count = int(entry.get("header_bytes", 0)), int(entry["tokens"])
            expected = header + count * self.dtype.itemsize
            actual = path.stat().st_size
            if actual != expected:
                raise ValueError(
                    f"{path}: {actual} bytes, expected {expected} (header {header} + {count} tokens x "
                    f"{self.dtype.itemsize} bytes) from {self.meta_path}"
                )
            tokens = np.memmap(path, dtype=self.dtype, mode="r", offset=header, shape=(count,))
            self.files.append(_TokenFile(path, tokens))

    @property
    def num_tokens(self) -> int:
        """Total tokens in the split."""
        return sum(len(f.tokens) for f in self.files)

    def _window_counts(self, block_size: int) -> np.ndarray:
        # A window needs block_size + 1 tokens (inputs and shifted targets).
        return np.array([max(0, len(f.tokens) - block_size) for f in self.files], dtype=np.int64)

    def num_windows(self, block_size: int) -> int:
        """Number of distinct ``block_size + 1``-token windows in the split."""
        return int(self._window_counts(block_size).sum())

    def read(self, window_ids: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for the given global window indices.

        Args:
            window_ids: int array ``[B]`` of indices in ``[0, num_windows(block_size))``.
            block_size: sequence length T.
        Returns:
            ``(x, y)``, int64 tensors ``[B, T]``; ``y`` is ``x`` shifted by one token.
        Raises:
            ValueError: the split has no window of ``block_size + 1`` tokens.
        """
        counts = self._window_counts(block_size)
        if counts.sum() == 0:
            raise ValueError(f"{self.meta_path}: split {self.split!r} is shorter than block_size + 1 = {block_size + 1}")
        bounds = np.cumsum(counts)
        file_idx = np.searchsorted(bounds, window_ids, side="right")
        offsets = window_ids - (bounds - counts)[file_idx]
        rows = np.stack(
            [np.asarray(self.files[f].tokens[o : o + block_size + 1], dtype=np.int64) for f, o in zip(file_idx, offsets)]
        )
        chunk = torch.from_numpy(rows)
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def train_window_ids(seed: int, step: int, batch_size: int, num_windows: int) -> np.ndarray:
    """Window indices of the global batch of ``step``: ``[batch_size]`` ints, uniform with replacement.

    A pure function of ``(seed, step)``; every rank computes the same array.
    """
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, num_windows, size=batch_size, dtype=np.int64)


def val_window_ids(num_windows: int, block_size: int, val_tokens: int) -> np.ndarray:
    """Evenly spaced validation windows covering about ``val_tokens`` tokens.

    The same windows for every run of a study (independent of seed), so val_loss values
    are comparable. Returns ``[n]`` ints with ``n = max(1, val_tokens // block_size)``
    capped at ``num_windows``.
    """
    n = min(num_windows, max(1, val_tokens // block_size))
    return np.linspace(0, num_windows - 1, n).round().astype(np.int64)


def rank_slice(items: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Contiguous share of ``items`` for ``rank`` (sizes differ by at most one)."""
    return np.array_split(items, world_size)[rank]
