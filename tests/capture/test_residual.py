import torch

from tests.conftest import input_for, model_state
from tests.replica import tokens_into_blocks
from tests.stream_replica import stream
from vit_explore.capture.residual import record_stream, replace_tokens, token_logits
from vit_explore.testing import tiny_vit


def test_record_stream_matches_replica_and_leaves_no_hooks(model, x):
    before = model_state(model)
    st = record_stream(model, x, parts=True)
    assert model_state(model) == before
    rep = stream(model, tokens_into_blocks(model, x))
    for got, want in zip(st.resid, rep["resid"]):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    # each block adds exactly its attention and MLP terms
    for i in range(len(model.blocks)):
        torch.testing.assert_close(st.resid[i] + st.attn_out[i] + st.mlp_out[i], st.resid[i + 1], atol=1e-5, rtol=1e-5)
    assert not st.logits.is_inference()


def test_replace_tokens_all_at_block_zero_and_token_logits_shape():
    model = tiny_vit()
    a, b = input_for(model, batch=1, seed=1), input_for(model, batch=2, seed=2)
    st = record_stream(model, a)
    with replace_tokens(model, 0, st.resid[0], None), torch.no_grad():
        out = model(b)
    torch.testing.assert_close(out, st.logits.expand(2, -1), atol=1e-6, rtol=1e-6)
    assert not model.blocks[0]._forward_pre_hooks
    assert token_logits(model, st.resid[-1]).shape == (1, 17, 7)
