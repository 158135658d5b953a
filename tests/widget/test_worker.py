"""The Explorer's job thread at close and at interpreter exit (vit_explore/widget/_worker.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from vit_explore.widget._worker import _Worker

ROOT = Path(__file__).resolve().parents[2]

#: a job that is inside torch's thread pool when the script ends
_BUSY_AT_EXIT = """
import time, torch
from vit_explore.widget._worker import _Worker
w = _Worker(lambda busy, label: None)
def job():
    a = torch.randn(256, 256)
    t = time.time()
    while time.time() - t < 1.5:
        a = torch.tanh(a @ a)
    print("job done", flush=True)
w.submit("s", "busy", job)
time.sleep(0.2)
print("script done", flush=True)
"""


def test_exit_while_a_job_runs_waits_for_it_instead_of_aborting():
    # without the at-exit join the daemon thread is still in torch while the interpreter tears
    # down, and the process aborts ("terminate called without an active exception", rc 134)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _BUSY_AT_EXIT], check=False, capture_output=True, text=True, env=env,
                       timeout=120)
    assert "terminate called" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["script", "done", "job", "done"]


def test_close_drops_pending_jobs_refuses_new_ones_and_joins():
    ran: list[str] = []
    gate = threading.Event()
    wk = _Worker(lambda busy, label: None)
    wk.submit("a", "", lambda: (gate.wait(5), ran.append("a")))
    time.sleep(0.1)  # "a" is running
    wk.submit("b", "", lambda: ran.append("b"))  # pending
    closer = threading.Thread(target=lambda: ran.append(f"closed {wk.close(10)}"))
    closer.start()
    time.sleep(0.1)
    assert ran == []  # close waits for the running job
    gate.set()
    closer.join(10)
    wk.submit("c", "", lambda: ran.append("c"))  # refused after close
    time.sleep(0.2)
    assert ran == ["a", "closed True"]
    assert wk.idle()


def test_closing_the_explorer_closes_its_job_thread():
    import torch

    import vit_explore as vx

    m = vx.load_model("toy-shapes")
    e = vx.Explorer(m, torch.rand(1, 3, 96, 96))
    assert e._worker.wait(60)
    e.close()
    ran: list[int] = []
    e._worker.submit("x", "", lambda: ran.append(1))  # refused: the widget is closed
    time.sleep(0.2)
    assert ran == [] and e._worker.idle()
