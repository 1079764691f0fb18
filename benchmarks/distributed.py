"""Several processes under torchrun: each rank samples its share of a cell's batches and rank 0
gathers them (gloo on the CPU, nccl on GPUs); one process is a world of one."""
from __future__ import annotations

import os
from typing import Any, List

import torch

__all__ = ["Distributed", "init_distributed"]


class Distributed:
    """This process's rank among ``world`` (torchrun), or a single process; ``gather`` collects
    one picklable object per rank on rank 0."""

    def __init__(self) -> None:
        import torch.distributed as tdist

        self.tdist = tdist
        self.active = tdist.is_available() and tdist.is_initialized()
        self.rank = tdist.get_rank() if self.active else 0
        self.world = tdist.get_world_size() if self.active else 1

    def gather(self, obj: Any) -> List[Any]:
        if not self.active:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        self.tdist.gather_object(obj, out, dst=0)
        return out if self.rank == 0 else []

    def barrier(self) -> None:
        if self.active:
            self.tdist.barrier()

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        self.tdist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed() -> Distributed:
    """Join the process group torchrun describes in the environment (if any)."""
    import torch.distributed as tdist

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group(backend=backend)
    return Distributed()
