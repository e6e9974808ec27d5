"""Attacks: constraints, targeted/untargeted behaviour, state restored."""

import pytest
import torch

from ancra.attacks import attack_mode, fgsm, margin, pgd
from ancra.models import create_model

EPS = 0.1


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("loss", ["ce", "kl", "cw"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_inside_eps_ball_and_unit_box(trained_small, fmnist, loss, start):
    x, y = fmnist[2][:32], fmnist[3][:32]
    x_adv = pgd(trained_small, x, y, eps=EPS, step_size=0.05, steps=3, loss=loss, random_start=start)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


def test_pgd_lowers_accuracy_of_trained_model_more_than_fgsm_or_noise(trained_small, fmnist):
    x, y = fmnist[2][:256], fmnist[3][:256]
    clean = _acc(trained_small, x, y)
    noise = _acc(trained_small, (x + EPS * torch.sign(torch.randn_like(x))).clamp(0, 1), y)
    acc_fgsm = _acc(trained_small, fgsm(trained_small, x, y, eps=EPS), y)
    acc_pgd = _acc(trained_small, pgd(trained_small, x, y, eps=EPS, step_size=EPS / 4, steps=10), y)
    assert clean > 0.7
    assert acc_pgd < 0.1 < noise
    assert acc_pgd <= acc_fgsm <= clean


def test_targeted_pgd_raises_target_probability(trained_small, fmnist):
    x, y = fmnist[2][:64], fmnist[3][:64]
    target = (y + 1) % 10
    with torch.no_grad():
        p0 = trained_small(x).softmax(1).gather(1, target[:, None]).mean()
    x_adv = pgd(trained_small, x, target, eps=EPS, step_size=EPS / 4, steps=10, targeted=True)
    with torch.no_grad():
        logits = trained_small(x_adv)
    p1 = logits.softmax(1).gather(1, target[:, None]).mean()
    assert p1 > p0 + 0.3
    assert (logits.argmax(1) == target).float().mean() > 0.5


def test_mixed_batch_equals_separate_attacks(trained_small, fmnist):
    """Untargeted and targeted rows in one batch give the same result as two separate calls."""
    x, y = fmnist[2][:16], fmnist[3][:16]
    t = (y + 3) % 10
    mask = torch.tensor([False] * 8 + [True] * 8)
    both = pgd(
        trained_small, x, torch.where(mask, t, y), eps=EPS, step_size=0.02, steps=5, random_start="none", targeted=mask
    )
    a = pgd(trained_small, x[:8], y[:8], eps=EPS, step_size=0.02, steps=5, random_start="none")
    b = pgd(trained_small, x[8:], t[8:], eps=EPS, step_size=0.02, steps=5, random_start="none", targeted=True)
    assert torch.allclose(both, torch.cat([a, b]), atol=1e-6)


def test_restarts_never_worse_than_one_run(trained_small, fmnist):
    x, y = fmnist[2][:128], fmnist[3][:128]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    one = pgd(trained_small, x, y, eps=0.03, step_size=0.01, steps=3, generator=g1)
    many = pgd(trained_small, x, y, eps=0.03, step_size=0.01, steps=3, restarts=3, generator=g2)
    assert _acc(trained_small, many, y) <= _acc(trained_small, one, y)


def test_mode_and_requires_grad_restored_and_params_frozen_during_attack():
    torch.manual_seed(0)
    model = create_model("narrow_resnet", 10, 1, width=8)
    model.fc.weight.requires_grad_(False)  # a caller's own frozen parameter must stay frozen
    model.train()
    seen = {}

    def spy(module, inputs, output):
        seen["training"] = module.training
        seen["grad_params"] = sum(p.requires_grad for p in module.parameters())

    h = model.conv1.register_forward_hook(spy)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    pgd(model, x, y, eps=EPS, step_size=0.05, steps=2, cr_beta=2.0)
    h.remove()
    assert seen == {"training": False, "grad_params": 0}
    assert model.training
    assert model.fc.weight.requires_grad is False
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "fc.weight")
    assert all(p.grad is None for p in model.parameters())
    with attack_mode(model):
        assert not model.training
    assert model.training


def test_margin_sign():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    assert margin(logits, torch.tensor([0, 0])).tolist() == [-2.0, 2.0]
