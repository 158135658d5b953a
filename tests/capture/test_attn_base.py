"""capture/attn_base.py: the forward parameters of an attention module, cached by the function."""

from torch import nn

from vit_explore.capture.attn_base import forward_params


def test_forward_params_follow_a_replaced_forward():
    class A(nn.Module):
        def forward(self, x, attn_mask=None):
            return x

    a = A()
    assert forward_params(a) == ("x", "attn_mask")
    assert forward_params(a) == ("x", "attn_mask")  # the cached answer

    def new_forward(self, x, rope=None, attn_mask=None):
        return x

    A.forward = new_forward  # a new function object: its own entry, not the stale one
    assert forward_params(a) == ("x", "rope", "attn_mask")


def test_forward_params_of_an_unhashable_callable():
    class Call:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x, y=None):
            return x

    class B(nn.Module):
        forward = Call()  # type: ignore[assignment]

    assert forward_params(B()) == ("x", "y")
