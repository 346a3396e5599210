"""Data-parallel training under ``torchrun``: who this process is and how ranks agree.

:func:`train <tl_inversion.training.trainer.train>` runs unchanged in a notebook, on one
device and under ``torchrun --nproc_per_node=N`` (gloo on CPU, NCCL on GPUs).
:meth:`Distributed.from_env` reads the variables torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``), starts the process group when torchrun started us and nobody has yet,
and returns a :class:`Distributed` that the trainer asks for its rank, its slice of the
global batch, gradient averaging and host-side agreement (time budget, Ctrl-C).

Design (issue 16.4):

* ``batch_size`` is the GLOBAL batch. Every rank draws the whole batch's indices,
  positions and noise from the same seeded generator (cheap: integers and a few random
  numbers) and keeps its own ``batch_size / world`` rows; the expensive work (probed
  forward, decoder forward and backward) runs on those rows only. The generators never
  diverge, so the ranks' rows are disjoint slices of exactly the rows a one-process run
  draws, and a checkpoint may be resumed under another world size (same data, same
  mathematics; only the summation order of the gradient changes).
* Gradients are averaged by hand (:meth:`Distributed.average_gradients`: one flattened
  all-reduce per dtype after ``backward``) rather than by wrapping modules in
  ``DistributedDataParallel``: the stacked decoders of :mod:`tl_inversion.decoding.stacking`
  keep their parameters as plain leaf tensors outside any ``nn.Module`` and run a
  ``vmap``-ed (optionally compiled) functional loss, which DDP cannot wrap without a
  wrapper module and its compile graph-splitting; the decoders are small (a few MB), so
  losing DDP's overlap of communication with backward costs little.
* Each rank's mean loss is weighted by its share of the global batch's non-PAD target
  tokens, so the averaged gradient equals the gradient of the one-process mean loss
  exactly (not a mean of per-rank means).
* Decoder banks are replicated on every rank: they are small next to the probed model's
  forward, and every rank needs the probed activations of its own rows at every site;
  splitting sites across ranks is the alternative when banks grow large.
* Host-side decisions (the time budget's clock, a SIGINT on any rank) go through a gloo
  group, so agreeing never waits for the GPU stream.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor

from tl_inversion.errors import ConfigError

__all__ = ["Distributed", "torchrun_env"]

_CONTROL: dict[str, Any] = {}  # the gloo group of host-side agreement, made once per process


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` from the variables ``torchrun`` sets, or ``None``.

    Returns:
        ``None`` when ``WORLD_SIZE`` / ``RANK`` are unset (a notebook, a plain script).
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


@dataclass
class Distributed:
    """This process's place in a data-parallel run (a one-process run is rank 0 of 1).

    Attributes:
        rank: this process's rank; world: the number of processes.
        local_rank: the rank on this host (its GPU index).
        started_here: the process group was initialised by :meth:`from_env` (and is
            destroyed by :meth:`close`).
        control: the gloo group for host-side agreement (``None``: the default group).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False
    control: Any = None

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, checkpoints, evaluates and shows progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """Join the run ``torchrun`` started, if any.

        Args:
            device: the resolved training device (``cuda`` selects NCCL, else gloo).

        Returns:
            A :class:`Distributed` (rank 0 of 1 outside ``torchrun`` or with one process).

        Raises:
            ConfigError: torchrun set a world size > 1 but this torch has no
                ``torch.distributed`` (field ``device``).
        """
        import torch.distributed as dist

        env = torchrun_env()
        if env is None or env[1] <= 1:
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                return cls._joined(dist, device, started=False)
            return cls()
        if not dist.is_available():
            raise ConfigError(f"WORLD_SIZE={env[1]} is set (torchrun?) but this torch build has no torch.distributed; "
                              "run one process, or install a torch with distributed support", field="device")
        started = False
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(env[2])
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            atexit.register(_destroy)  # kept for later train() calls of this process
            started = True
        return cls._joined(dist, device, started=started)

    @classmethod
    def _joined(cls, dist: Any, device: torch.device, started: bool) -> Distributed:
        if "group" not in _CONTROL:
            _CONTROL["group"] = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return cls(rank=rank, world=world, local_rank=local, started_here=started, control=_CONTROL["group"])

    def device(self, device: torch.device) -> torch.device:
        """The device this rank trains on: ``cuda:LOCAL_RANK`` for a CUDA run, else ``device``."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size``.

        Raises:
            ConfigError: ``batch_size`` is not divisible by the world size (field ``batch_size``).
        """
        if batch_size % self.world:
            raise ConfigError(f"batch_size is the global batch and must be divisible by the {self.world} processes "
                              f"of this torchrun, got {batch_size}; use a multiple of {self.world}",
                              field="batch_size")
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Wait for every rank (no-op in a one-process run)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over ranks in place (on its device; returns it)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Replace every parameter's gradient by its mean over ranks (a missing gradient counts as 0).

        Args:
            params: the trainable parameters, in the same order on every rank.
        """
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.all_reduce_sum(flat)
            flat.div_(self.world)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    @torch.no_grad()
    def broadcast_params(self, params: Iterable[Tensor]) -> None:
        """Copy rank 0's values of ``params`` to every rank (in place)."""
        if self.enabled:
            import torch.distributed as dist

            for p in params:
                dist.broadcast(p.data, src=0)

    def max(self, value: float) -> float:
        """The largest ``value`` over ranks (host side, through the gloo group)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return float(t)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (host side)."""
        return self.max(1.0 if flag else 0.0) > 0 if self.enabled else flag

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def close(self, wait: bool = True) -> None:
        """End this call's part in the run: wait for every rank (so all return once rank 0
        has saved). A process group :meth:`from_env` started stays up for later calls and is
        destroyed when the process exits.

        Args:
            wait: wait for every rank (False after an error: the others may never come).
        """
        if self.enabled and wait:
            self.barrier()


def _destroy() -> None:
    """Destroy the process group :meth:`Distributed.from_env` started (at exit)."""
    import torch.distributed as dist

    _CONTROL.clear()
    if dist.is_initialized():
        dist.destroy_process_group()
