"""``vx.capture`` is both the subpackage and the call: its submodules import by name, and
calling it is ``capture.session.capture``."""

import inspect
import os
import pathlib
import subprocess
import sys

import torch

from vit_explore.testing import tiny_vit

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_submodules_import_by_name_and_the_call_works():
    import vit_explore as vx
    import vit_explore.capture.ablation as A
    import vit_explore.capture.session as s

    assert vx.capture.session is s and vx.capture.ablation is A
    assert inspect.signature(vx.capture) == inspect.signature(s.capture)
    model = tiny_vit("vanilla").eval()
    x = torch.randn(2, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(0))
    a = vx.capture(model, x, vx.Needs(attn=True))
    b = s.capture(model, x, s.Needs(attn=True))
    assert isinstance(a, s.Trace) and len(a.attn) == len(model.blocks)
    for u, v in zip(a.attn, b.attn):
        assert torch.equal(u, v)
    with torch.no_grad():
        torch.testing.assert_close(a.logits, model(x))


def test_in_a_fresh_interpreter():
    code = (
        "import vit_explore.capture.session as s\n"
        "import vit_explore.capture.ablation as A\n"
        "import vit_explore as vx\n"
        "from vit_explore.capture import capture\n"
        "assert capture is s.capture and callable(vx.capture) and vx.capture.ablation is A\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr
