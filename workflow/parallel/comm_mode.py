""":func:`TPCommMode`: torch's ``CommDebugMode`` that also sums payload bytes.

It measures the collectives a model really issues, independently of stagerun's own counters
(tests check that both agree).
"""

from __future__ import annotations

import warnings

import torch


def _collective_bytes(args) -> int:
    first = args[0] if args else None
    tensors = first if isinstance(first, (list, tuple)) else [first]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _tp_comm_mode_class():
    from torch.distributed.tensor.debug import (
        CommDebugMode,  # deferred heavy import: DTensor debug tools, only when measuring
    )
    from torch.distributed.tensor.debug._comm_mode import (  # deferred heavy import: DTensor debug tools
        NATIVE_TO_PY_MAPPING,
        c10d_collective_ops,
    )

    class _TPCommMode(CommDebugMode):
        def __enter__(self):
            self.calls = {"forward": 0, "backward": 0}
            self.bytes = {"forward": 0, "backward": 0}
            # CommDebugMode's module tracker warns about blocks returning a ShardedStream.
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.filterwarnings("ignore", message="For backward hooks to be called")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return super().__enter__()

        def __exit__(self, *args):
            super().__exit__(*args)
            self._warnings.__exit__(*args)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = super().__torch_dispatch__(func, types, args, kwargs)
            packet = getattr(func, "_overloadpacket", None)
            if out is not NotImplemented and packet is not None and (
                    packet in self.comm_registry or packet in c10d_collective_ops or packet in NATIVE_TO_PY_MAPPING):
                phase = "backward" if self.advanced_module_tracker.is_bw else "forward"
                self.calls[phase] += 1
                self.bytes[phase] += _collective_bytes(args)
            return out

    return _TPCommMode


def TPCommMode():
    """A ``torch.distributed.tensor.debug.CommDebugMode`` that also sums payload bytes and splits
    forward / backward: after ``with TPCommMode() as mode: ...``, ``mode.calls`` and
    ``mode.bytes`` are ``{"forward": n, "backward": n}`` over every collective dispatched
    (DTensor's functional collectives and ``torch.distributed`` c10d ops alike), and
    ``mode.get_comm_counts()`` is CommDebugMode's count per op. For tests and benchmarks (its
    dispatch hook slows every op down)."""
    return _tp_comm_mode_class()()
