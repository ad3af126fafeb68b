"""Warmup + cosine LR multiplier against its closed form."""
import math

import pytest
import torch

from seqmodels.train.schedule import WarmupCosine, warmup_cosine_scheduler


def test_closed_form():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0, abs=1e-15)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-15)
    assert f(14) == pytest.approx(0.1, abs=1e-15) and f(100) == pytest.approx(0.1, abs=1e-15)


def test_scheduler_drives_optimizer_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2.0)
    sched = warmup_cosine_scheduler(opt, 2, 4, 0.0)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 2.0, 2.0, 1.0, 0.0], abs=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup_steps": 5, "total_steps": 4}, "warmup_steps"),
    ({"warmup_steps": 0, "total_steps": 0}, "total_steps"),
    ({"warmup_steps": 0, "total_steps": 4, "min_lr_ratio": 2.0}, "min_lr_ratio"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupCosine(**kwargs)
