"""NaFlexViT (``timm.models.naflexvit``) on (B, 3, H, W) images of any size: its ``embeds`` patchify
the image (every patch valid: no padding, no attention mask), then plain timm blocks, registers and
an average pool. Capture and the attention methods against the float64 replica (tests/replica.py)."""

import pytest
import timm
import torch

import vit_explore as vx
from vit_explore.capture.session import Needs, capture

from ..replica import readout_rows, replica_forward, tokens_into_blocks


def naflex(seed=0):
    torch.manual_seed(seed)
    m = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, depth=2, embed_dim=32, num_heads=2,
                          num_classes=5).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if "bias" in n or "gamma" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m


def close(got, ref, rtol=1e-4):
    assert ref.abs().max() > 0
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])  # the patch count follows the image
def test_capture_and_methods_match_the_replica(size):
    model = naflex()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 3])
    T, grid = model.num_prefix_tokens, (size[0] // 16, size[1] // 16)
    tokens = tokens_into_blocks(model, x).requires_grad_(True)
    logits, attns, scores = replica_forward(model.double(), tokens)
    model.float()
    logits.gather(1, target[:, None]).sum().backward()
    tr = capture(model, x, Needs(attn=True, attn_grad=True, scores=True), target=target)
    assert tr.layout.grid == grid and tr.layout.num_prefix == T == 4 and tr.layout.readout == "avg"
    close(tr.logits, logits.detach())
    for i in range(2):
        close(tr.attn_at(i), attns[i].detach())
        close(tr.scores_at(i), scores[i].detach())
        close(tr.scores_at(i).double().softmax(-1), attns[i].detach())
        close(tr.attn_grad_at(i), attns[i].grad, rtol=1e-3)
    n = attns[0].shape[-1]
    J = None
    for a in attns:
        a_hat = a.detach().mean(1) + torch.eye(n, dtype=torch.float64)
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        J = a_hat if J is None else a_hat @ J
    close(vx.explain(model, x, "rollout").patch_map, readout_rows(J, model).reshape(2, *grid))
    R = torch.eye(n, dtype=torch.float64).repeat(2, 1, 1)
    for a in attns:
        R = R + (a.grad * a.detach()).clamp(min=0).mean(1) @ R
    close(vx.explain(model, x, "chefer_generic", target=target).patch_map, readout_rows(R - torch.eye(n, dtype=torch.float64), model).reshape(2, *grid),
          rtol=1e-3)


@pytest.mark.parametrize("method", ["rollout", "chefer_lrp", "attn_lrp", "ag_cam", "tam"])
def test_batch_equals_per_image_and_model_left_as_found(method):
    model = naflex()
    model.train()
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
              [m.__dict__.get("fused_attn", "unset") for m in model.modules()])
    x = torch.randn(3, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    both = vx.explain(model, x, method, target=[0, 2, 4]).patch_map
    for b in range(3):
        one = vx.explain(model, x[b : b + 1], method, target=[[0, 2, 4][b]]).patch_map
        torch.testing.assert_close(one, both[b : b + 1], rtol=1e-4, atol=1e-6 * float(both.abs().max()))
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [m.__dict__.get("fused_attn", "unset") for m in model.modules()]) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

    def boom(mod, args, out):
        raise RuntimeError("boom in the head")

    h = model.head.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        vx.explain(model, x, method)
    h.remove()
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [m.__dict__.get("fused_attn", "unset") for m in model.modules()]) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("method", ["chefer_lrp", "chefer_generic", "ag_cam", "attn_grad_cam", "attention_flow", "raw_attention"])
def test_every_token_method_equals_a_plain_vit_with_the_same_blocks(method):
    """A timm VisionTransformer with NaFlexViT's blocks, norms and head, fed NaFlexViT's tokens at its
    first block, is the same network above the embedding: every token-attention map must agree."""
    model = naflex()
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=64, depth=2, embed_dim=32, num_heads=2,
                            num_classes=5, class_token=False, reg_tokens=4, global_pool="avg", fc_norm=True,
                            no_embed_class=True, init_values=1.0).eval()
    missing, unexpected = vit.load_state_dict({k: v for k, v in model.state_dict().items()
                                      if k.startswith(("blocks.", "norm.", "fc_norm.", "head."))}, strict=False)
    assert missing == ["reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"] and not unexpected
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    tokens = tokens_into_blocks(model, x).float()
    def feed(mod, args):  # NaFlexViT's tokens, as a leaf of the graph where the input was one
        return (tokens[: args[0].shape[0]].clone().requires_grad_(args[0].requires_grad),)

    h = vit.blocks[0].register_forward_pre_hook(feed)
    try:
        ref = vx.explain(vit, x, method, target=[1, 2]).patch_map
    finally:
        h.remove()
    got = vx.explain(model, x, method, target=[1, 2]).patch_map
    assert ref.abs().max() > 0 or method == "attn_grad_cam"
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
