"""Peak memory of one call, shared by the bench scripts (``bench_peers``, ``lxt_peer``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def peak_rss_mb(fn) -> float:
    """Growth of the peak RSS while ``fn`` runs once, in a forked child (Linux); NaN elsewhere."""
    if not hasattr(os, "fork"):
        return float("nan")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        import resource

        os.close(r)
        # the parent's OpenMP thread pool does not survive the fork: a parallel region would wait for it
        # forever (it did, at ViT-B/16 batch 8); one thread runs every region inline
        torch.set_num_threads(1)
        rss0 = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        try:
            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            os.write(w, f"{max(peak - rss0, 0.0)}".encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.waitpid(pid, 0)
    os.close(r)
    return float(data) if data else float("nan")
