"""The runners' AdamW must train exactly as torch.optim.AdamW(fused=True) does."""

import subprocess
import sys

import pytest
import torch

from nexus_node.pipeline.optim import FusedAdamW


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("lr,weight_decay", [(1e-3, 1e-2), (3e-2, 0.0), (1e-4, 0.3)])
def test_matches_torch_adamw_step_for_step(lr: float, weight_decay: float) -> None:
    ours, theirs = _model(0), _model(0)
    opt_ours = FusedAdamW(ours.parameters(), lr=lr, weight_decay=weight_decay)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(25):
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if step == 3:   # a parameter without a gradient is left alone, as the library does
                model[3].bias.grad = None
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b), f"step {step}: parameters differ"


def test_a_step_does_not_load_the_compiler() -> None:
    # Why the class exists: torch.optim's first step imports torch._dynamo (seconds, tens of MB).
    code = ("import sys, torch\n"
            "from nexus_node.pipeline.optim import FusedAdamW\n"
            "m = torch.nn.Linear(4, 1); m(torch.randn(8, 4)).sum().backward()\n"
            "FusedAdamW(m.parameters(), lr=1e-3).step()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
