"""Independent runs over several ranks: a work queue on a torch.distributed.TCPStore.

Each launched rank (`deepspeed --num_gpus N` / a hostfile) claims the next unclaimed item from a
shared counter when it is free, so a rank with short items takes more of them and the ranks
finish together; which rank runs an item changes nothing in it. Every item then trains on a
process group of its own process alone: `split_ranks` reads the launcher's RANK / WORLD_SIZE
first and replaces them with single-process values. The ranks meet only through the store on
the launcher's MASTER_ADDR:MASTER_PORT, where rank 0 waits for every rank before it writes
combined outputs (`wait_for_ranks`).
"""
from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Iterator, Optional, Sequence


def split_ranks(timeout_minutes: float = 30) -> tuple[int, int, Optional[object]]:
    """(rank, world_size, store) of the launcher; with several ranks the environment is then set
    for a world-size-1 process group of this process alone (store None with one rank)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    store = None
    if world > 1:
        from torch.distributed import TCPStore

        from seqmodels.train.distributed import _free_port

        store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0,
                         timeout=timedelta(minutes=timeout_minutes))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    return rank, world, store


def claimed_items(items: Sequence, store, key: str = "next_item") -> Iterator[tuple[int, object]]:
    """(index, item) pairs this rank runs: all of them without a store; with one, each free rank
    claims the next unclaimed index from the shared counter `key`."""
    if store is None:
        yield from enumerate(items)
        return
    while True:
        i = store.add(key, 1) - 1
        if i >= len(items):
            return
        yield i, items[i]


def wait_for_ranks(store, world: int, rank: int, key: str = "finished", poll_s: float = 2.0) -> None:
    """Every rank reports it has finished; rank 0 (the store's server) returns once all have."""
    if store is None:
        return
    store.add(key, 1)
    if rank == 0:
        while store.add(key, 0) < world:
            time.sleep(poll_s)
