import pytest
import torch

from neurostep.engine.layout import dense_strides, in_layout, same_layout


@pytest.mark.parametrize("make", [
    lambda t: t,
    lambda t: t.contiguous(memory_format=torch.channels_last),
    lambda t: t.permute(3, 1, 0, 2),
    lambda t: t[:1],                          # a size-1 dim: its stride does not count
])
def test_dense_layouts_are_recognised(make):
    t = make(torch.randn(2, 3, 4, 5))
    assert dense_strides(t) == t.stride()
    assert torch.equal(in_layout(t.contiguous(), t.stride()), t)


@pytest.mark.parametrize("make", [
    lambda t: t[:, :, ::2],                   # gaps
    lambda t: t[:1].expand(3, 3, 4, 5),       # overlap
    lambda t: t[:, 1:],                       # a slice of a dim that is not the outermost
])
def test_views_with_gaps_or_overlap_are_not_dense(make):
    assert dense_strides(make(torch.randn(3, 3, 4, 5))) is None


def test_in_layout_copies_only_when_the_layout_differs():
    t = torch.randn(2, 3, 4, 5)
    strides = t.contiguous(memory_format=torch.channels_last).stride()
    assert in_layout(t, t.stride()) is t
    moved = in_layout(t, strides, torch.float64)
    assert moved.stride() == strides and moved.dtype == torch.float64 and torch.equal(moved, t.double())
    assert same_layout((1, 3), (7, 1), (3, 1)) and not same_layout((2, 3), (1, 2), (3, 1))
    # differentiable: the copy passes gradients back
    leaf = torch.randn(2, 3, 4, 5, requires_grad=True)
    in_layout(leaf, strides).sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(leaf))
