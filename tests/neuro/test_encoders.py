import pytest
import torch

from neurostep.neuro import encoders


def test_rate_matches_probability_and_shape():
    x = torch.tensor([0.0, 0.25, 1.0, 1.7, -0.3])
    s = encoders.rate(x, 4000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4000, 5)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(s.mean(0), torch.tensor([0.0, 0.25, 1.0, 1.0, 0.0]), atol=0.03, rtol=0)


def test_latency_fires_once_earlier_for_stronger_inputs():
    x = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    s = encoders.latency(x, 32, tau=5.0, threshold=0.01, normalize=True)
    assert s.sum(0).tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    times = s.argmax(0)[1:]
    assert (times[:-1] >= times[1:]).all() and times[-1] == 0
    lin = encoders.latency(x, 11, tau=10.0, linear=True)
    assert lin.argmax(0)[1:].tolist() == [8, 5, 1, 0]


def test_delta_matches_snntorch():
    spikegen = pytest.importorskip("snntorch.spikegen")
    x = torch.tensor([[1.0], [2.0], [0.0], [2.0], [2.9]])
    for off in (False, True):
        for pad in (False, True):
            ours = encoders.delta(x, 1.0, off_spikes=off, pad_with_first=pad)
            theirs = spikegen.delta(x, threshold=1.0, off_spike=off, padding=pad)
            assert torch.equal(ours, theirs)


def test_encoders_reject_bad_input():
    with pytest.raises(ValueError):
        encoders.rate(torch.rand(3), 0)
    with pytest.raises(TypeError):
        encoders.rate(torch.ones(3, dtype=torch.long), 4)
    with pytest.raises(ValueError):
        encoders.delta(torch.zeros(0, 2))
    with pytest.raises(ValueError):
        encoders.latency(torch.rand(3), 5, threshold=1.0)


def test_encoders_propagate_nan():
    x = torch.tensor([0.5, float("nan")])
    assert torch.isnan(encoders.rate(x, 3)[:, 1]).all()
    assert torch.isnan(encoders.latency(x, 3)[:, 1]).all()
    assert torch.isnan(encoders.delta(x.view(2, 1))[1:]).all()
