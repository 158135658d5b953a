"""The benchmark under torch.distributed: 2 CPU processes (gloo on localhost) give the same
merged table as one process."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vit_explore.evaluation import make_dataset, run_benchmark
from vit_explore.testing import tiny_vit

METRICS = ("del_tam", "del_patch", "pointing", "energy_pg", "jaccard", "mass", "rank", "mass_patch", "spurious")


def _run(model):
    ds = make_dataset("shapes-spurious", model, 6)
    return run_benchmark(model, ds, ["rollout", "saliency"], metrics=METRICS, batch_size=2, seed=3)


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        res = _run(tiny_vit("vanilla", depth=2))
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"table": res.table, "meta": res.meta, "curves": res.curves}, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_table_equals_single_process(tmp_path):
    out = tmp_path / "dist.json"
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    merged = json.loads(out.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _run(tiny_vit("vanilla", depth=2))
    finally:
        torch.set_num_threads(threads)
    assert merged["meta"]["world_size"] == 2 and single.meta["world_size"] == 1
    assert merged["meta"]["n_images"] == single.meta["n_images"] == 6
    assert set(merged["table"]) == set(single.table)
    for meth, row in single.table.items():
        for k, v in row.items():
            w = merged["table"][meth][k]
            assert (math.isnan(v) and (w is None or math.isnan(w))) or w == pytest.approx(v, rel=1e-6, abs=1e-9), (meth, k)
    for meth, cs in single.curves.items():
        for k, c in cs.items():
            assert merged["curves"][meth][k]["y"] == pytest.approx(c["y"], rel=1e-6, abs=1e-9)
