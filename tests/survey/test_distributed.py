"""The survey under torch.distributed: 2 CPU processes (gloo on localhost) write a store equal to the
one a single process writes."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from vit_explore.survey import survey
from vit_explore.testing import tiny_vit


def _data():
    return torch.randn(13, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _worker(rank: int, port: int, root: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        s = survey(tiny_vit("vanilla", depth=2, num_classes=3), _data(), method="rollout", batch_size=2,
                   store=root, progress=False)
        assert s.store.complete()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_store_equals_single_process(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path / "dist")), nprocs=2, join=True,
                       start_method="spawn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = survey(tiny_vit("vanilla", depth=2, num_classes=3), _data(), method="rollout", batch_size=2,
                        store=tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(threads)
    (folder,) = list((tmp_path / "dist").iterdir())
    assert folder.name == single.store.path.name  # the same key
    from vit_explore.survey import MapStore

    merged = MapStore.open(folder)
    for k in ("maps", "target", "prob", "pred", "done"):
        np.testing.assert_array_equal(np.asarray(merged.arrays[k]), np.asarray(single.store.arrays[k]))
