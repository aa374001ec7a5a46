"""The EMA of the trainings (scaffold.ema): torch's AveragedModel with a warming-up decay, buffers copied,
its count and weights in the state dict. The trainings' tests check it end to end (exact resume, export,
FSDP in tests/test_var_train.py)."""

import pytest
import torch
from torch import nn

from scaffold.ema import EMA, ema_decay


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros(()))


def test_ema_follows_the_warming_up_decay_and_copies_buffers():
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.9, warmup=4)
    expected = {k: v.clone() for k, v in net.named_parameters()}  # the first average is the weights
    assert int(ema.n_averaged) == 1 and not any(p.requires_grad for p in ema.parameters())
    for n in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net.count += 1
        ema.update_parameters(net)
        d = min(0.9, n / (4 + n))  # 0.2, 0.333, 0.429, 0.5, 0.556: short runs average
        for name, p in net.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach()
            torch.testing.assert_close(ema.module.get_parameter(name), expected[name], rtol=1e-6, atol=1e-7)
        assert ema.module.count == net.count  # buffers are copied, not averaged
    assert int(ema.n_averaged) == 6
    assert ema_decay(0.9, 4, 1000) == 0.9


def test_ema_state_dict_restores_the_average_and_its_count():
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.99, warmup=10)
    for _ in range(3):
        with torch.no_grad():
            net.lin.weight.mul_(1.5)
        ema.update_parameters(net)
    state = ema.state_dict()
    assert set(state) == {"n_averaged", "module.lin.weight", "module.lin.bias", "module.count"}
    restored = EMA(Net(), decay=0.99, warmup=10)
    restored.load_state_dict(state)
    ema.update_parameters(net)
    restored.update_parameters(net)  # the same decay: the count came back too
    for (ka, va), (kb, vb) in zip(ema.state_dict().items(), restored.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_ema_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match="EMA decay must be in"):
        EMA(Net(), decay=1.0)
