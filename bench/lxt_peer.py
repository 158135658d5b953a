"""LXT (Achtibat et al., ICML 2024; the PyPI package ``lxt``, rachtibat/LRP-eXplains-Transformers) as
the peer of our ``attn_lrp``, run as a user of LXT runs it: its ``lxt.efficient`` rules for
torchvision's ViT (``models/vit_torch.cp_LRP``: CP-LRP in the attention, the identity rule on GELU
and LayerNorm), optionally zennit's ``Gamma`` on the patch embedding (``monkey_patch_zennit``, as
LXT's ViT example does), on a torchvision ``VisionTransformer`` holding the timm model's weights.

LXT patches classes of ``torch.nn`` itself (``LayerNorm``, ``GELU``, ``MultiheadAttention``: the
classes timm's ViT uses too), for the whole process and with no way back. So it runs in a child
process of its own (``LXTPeer``), which the parent drives over a pipe: one call of the peer is one
attribution of the whole batch there, timed by the parent like any other callable.

LXT 2.1's package ``__init__`` imports its patches for every model family it knows, and its BERT
module imports ``find_pruneable_heads_and_indices``, which transformers 5 removed; so the child
loads ``lxt.efficient.patches``, ``.rules`` and ``.models.vit_torch`` under bare package modules
(their code unchanged) and applies the ``cp_LRP`` map as ``lxt.efficient.monkey_patch`` does.

    python bench/lxt_peer.py CHECKPOINT   (the child; CHECKPOINT from ``LXTPeer``)
"""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
import tempfile
import time
import types
from functools import partial
from typing import Any

import torch
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent


def to_torchvision_state(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(torchvision ``VisionTransformer`` arguments, its state dict) holding the weights of the timm
    ``VisionTransformer`` ``model``. Only the architecture both have: a class token read out by
    the head, square images and patches, LayerNorm, a GELU MLP, qkv with bias, no LayerScale, no
    q/k norm, no register tokens, no pre-norm."""
    import timm.models.vision_transformer as tv_timm
    from timm.layers import Mlp

    if not isinstance(model, tv_timm.VisionTransformer):
        raise TypeError(f"LXT's ViT rules are for torchvision's ViT; a {type(model).__name__} has no counterpart there")
    blk = model.blocks[0]
    problems = [
        what
        for what, bad in (
            ("a class token read out by the head", model.global_pool != "token" or model.cls_token is None),
            ("no register or distillation tokens", model.num_prefix_tokens != 1),
            ("no pre-norm or fc_norm", not isinstance(model.norm_pre, nn.Identity)
             or not isinstance(model.fc_norm, nn.Identity)),
            ("square images and patches", model.patch_embed.img_size[0] != model.patch_embed.img_size[1]
             or model.patch_embed.patch_size[0] != model.patch_embed.patch_size[1]),
            ("a GELU MLP", not isinstance(blk.mlp, Mlp) or not isinstance(blk.mlp.act, nn.GELU)
             or blk.mlp.act.approximate != "none"),
            ("qkv with bias, no q/k norm", blk.attn.qkv.bias is None or not isinstance(blk.attn.q_norm, nn.Identity)),
            ("no LayerScale", not isinstance(blk.ls1, nn.Identity)),
            ("LayerNorm", not all(isinstance(m, nn.LayerNorm) for m in (blk.norm1, blk.norm2, model.norm))),
        )
        if bad
    ]
    if problems:
        raise ValueError("torchvision's ViT has " + "; ".join(problems) + f"; {type(model).__name__} differs")
    args = {
        "image_size": model.patch_embed.img_size[0],
        "patch_size": model.patch_embed.patch_size[0],
        "num_layers": len(model.blocks),
        "num_heads": blk.attn.num_heads,
        "hidden_dim": model.embed_dim,
        "mlp_dim": blk.mlp.fc1.out_features,
        "num_classes": model.num_classes,
        "eps": model.norm.eps,
    }
    sd: dict[str, torch.Tensor] = {
        "class_token": model.cls_token,
        "conv_proj.weight": model.patch_embed.proj.weight,
        "conv_proj.bias": model.patch_embed.proj.bias,
        "encoder.pos_embedding": model.pos_embed,
        "encoder.ln.weight": model.norm.weight,
        "encoder.ln.bias": model.norm.bias,
        "heads.head.weight": model.head.weight,
        "heads.head.bias": model.head.bias,
    }
    names = {"ln_1.": "norm1.", "self_attention.in_proj_": "attn.qkv.", "self_attention.out_proj.": "attn.proj.",
             "ln_2.": "norm2.", "mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}
    for i, b in enumerate(model.blocks):
        own = b.state_dict()
        for tv_name, timm_name in names.items():
            for p in ("weight", "bias"):
                sd[f"encoder.layers.encoder_layer_{i}.{tv_name}{p}"] = own[f"{timm_name}{p}"]
    return args, {k: v.detach().to("cpu", torch.float32).clone() for k, v in sd.items()}


class LXTPeer:
    """LXT's attribution of ``model`` on ``x`` for ``target``, in a child process (see the module
    docstring). ``peer()`` runs it once; ``peer.maps()`` returns (pixel relevance (B, H, W), the
    torchvision model's logits (B, classes)); ``close()`` (or a ``with`` block) ends the child."""

    def __init__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, threads: int = 1,
                 gamma_conv: float = 0.0) -> None:
        args, state = to_torchvision_state(model)
        self._dir = tempfile.TemporaryDirectory(prefix="lxt-peer-")
        ckpt = pathlib.Path(self._dir.name) / "in.pt"
        torch.save({"args": args, "state": state, "x": x.detach().cpu().float(), "target": target.cpu(),
                    "threads": threads, "gamma_conv": float(gamma_conv)}, ckpt)
        # stderr to a file: a full pipe would stall the child
        self._err = open(pathlib.Path(self._dir.name) / "stderr.txt", "w+")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen([sys.executable, str(HERE / "lxt_peer.py"), str(ckpt)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._err, text=True)
        self._ask("ping")

    def _ask(self, cmd: str) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(cmd + "\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline().strip()
        if not reply.startswith("ok"):
            self._proc.kill()
            self._proc.wait(timeout=30)
            self._err.seek(0)
            raise RuntimeError(f"the LXT child process failed on {cmd!r}: {reply or self._err.read()[-3000:]}")
        return reply

    def __call__(self) -> None:
        self._ask("run")

    def maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = pathlib.Path(self._dir.name) / "out.pt"
        self._ask(f"save {out}")
        got = torch.load(out, weights_only=True)
        return got["pixel"], got["logits"]

    def peak_rss_mb(self) -> float:
        """Growth of the peak resident set while one attribution runs, measured in the child as
        ``bench_peers`` measures ours (``_memory.peak_rss_mb``: a forked process); NaN off Linux."""
        return float(self._ask("mem").split()[1])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._ask("quit")
            except (RuntimeError, BrokenPipeError):
                pass
            self._proc.wait(timeout=30)
        for f in (self._proc.stdin, self._proc.stdout, self._err):
            if f is not None:
                f.close()
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_lxt_vit_rules() -> dict:
    """LXT's ``cp_LRP`` patch map for torchvision's ViT, its modules loaded under bare packages
    (the module docstring says why)."""
    import lxt

    root = pathlib.Path(lxt.__file__).parent / "efficient"
    for name, path in (("lxt.efficient", root), ("lxt.efficient.models", root / "models")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(path)]
            sys.modules[name] = pkg
    return importlib.import_module("lxt.efficient.models.vit_torch").cp_LRP


def _child(ckpt: str) -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    cfg = torch.load(ckpt, weights_only=True)
    torch.set_num_threads(cfg["threads"])
    args = dict(cfg["args"])
    eps = args.pop("eps")
    tv = VisionTransformer(**args, norm_layer=partial(nn.LayerNorm, eps=eps)).eval()
    tv.load_state_dict(cfg["state"], strict=True)
    for p in tv.parameters():
        p.requires_grad_(False)
    for target_cls, patch in _load_lxt_vit_rules().items():  # lxt.efficient.monkey_patch(vision_transformer)
        if not patch(target_cls):
            raise RuntimeError(f"LXT could not patch {target_cls.__name__}")
    if cfg["gamma_conv"] > 0:  # LXT's ViT example: zennit's Gamma on the patch embedding
        import zennit.rules as z_rules
        from lxt.efficient.zennit_patches import monkey_patch_zennit
        from zennit.composites import LayerMapComposite

        monkey_patch_zennit()
        LayerMapComposite([(nn.Conv2d, z_rules.Gamma(cfg["gamma_conv"]))]).register(tv)
    x, target = cfg["x"], cfg["target"]

    def attribute() -> tuple[torch.Tensor, torch.Tensor]:  # LXT's README: relevance = x * x.grad
        xi = x.clone().requires_grad_(True)
        y = tv(xi)
        y.gather(1, target[:, None]).sum().backward()
        return (xi * xi.grad).sum(1).detach(), y.detach()

    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            t0 = time.perf_counter()
            attribute()
            print(f"ok {time.perf_counter() - t0:.6f}", flush=True)
        elif cmd == "save":
            pixel, logits = attribute()
            torch.save({"pixel": pixel, "logits": logits}, arg)
            print("ok", flush=True)
        elif cmd == "mem":
            from _memory import peak_rss_mb  # bench/, this script's folder

            print(f"ok {peak_rss_mb(attribute)}", flush=True)
        elif cmd == "ping":
            print("ok", flush=True)
        else:
            print("ok", flush=True)
            return


if __name__ == "__main__":
    _child(sys.argv[1])
