"""ANC and the base objectives against their formulas, on fixed tensors."""

import math

import torch
import torch.nn.functional as F

from ancra.losses import anc_loss, mart_loss, trades_loss


def test_anc_zero_when_predicted_classes_differ():
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    n = torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    for alpha in (1.0, 0.5, 0.0):
        assert anc_loss(a, n, alpha).item() == 0.0


def test_anc_equals_sqrt_of_max_probabilities_by_hand():
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    n = torch.tensor([[1.0, 0.0, 0.5], [0.0, 3.0, 0.0]])
    p, q = F.softmax(a, 1), F.softmax(n, 1)
    by_hand = sum(math.sqrt(p[i].max().item() * q[i].max().item()) for i in range(2)) / 2
    assert abs(anc_loss(a, n).item() - by_hand) < 1e-6
    # one pair with different predictions contributes 0
    n2 = n.clone()
    n2[1] = torch.tensor([5.0, 0.0, 0.0])
    assert abs(anc_loss(a, n2).item() - math.sqrt(p[0].max() * q[0].max()) / 2) < 1e-6


def _grads(alpha):
    a = torch.tensor([[2.0, 0.1, 0.0], [0.3, 1.0, 0.5]], requires_grad=True)
    n = torch.tensor([[1.0, 0.2, 0.5], [0.0, 3.0, 0.4]], requires_grad=True)
    ga, gn = torch.autograd.grad(anc_loss(a, n, alpha), (a, n), allow_unused=True)
    return ga, gn


def test_anc_asymmetry_alpha_one_freezes_anchor_alpha_zero_freezes_negative():
    ga, gn = _grads(1.0)
    assert (ga is None or ga.abs().max() == 0) and gn.abs().max() > 0
    ga, gn = _grads(0.0)
    assert ga.abs().max() > 0 and (gn is None or gn.abs().max() == 0)
    ga, gn = _grads(0.5)
    assert ga.abs().max() > 0 and gn.abs().max() > 0


def test_anc_with_k_negatives_averages_all_pairs():
    torch.manual_seed(0)
    a = torch.randn(4, 5) * 3
    n = torch.randn(4, 3, 5) * 3
    p, q = F.softmax(a, 1), F.softmax(n, -1)
    by_hand = 0.0
    for i in range(4):
        for j in range(3):
            if p[i].argmax() == q[i, j].argmax():
                by_hand += math.sqrt(p[i].max() * q[i, j].max())
    by_hand /= 12
    assert abs(anc_loss(a, n).item() - by_hand) < 1e-6
    # (B*k, K) anchor-major layout gives the same value
    assert abs(anc_loss(a, n.reshape(12, 5)).item() - by_hand) < 1e-6


def test_trades_equals_formula():
    torch.manual_seed(1)
    nat, adv, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    p, q = F.softmax(nat, 1), F.softmax(adv, 1)
    ce = -torch.log(p[torch.arange(5), y]).mean()
    kl = (p * (p.log() - q.log())).sum() / 5
    assert torch.allclose(trades_loss(nat, adv, y, beta=6.0), ce + 6.0 * kl, atol=1e-5)


def test_mart_equals_formula():
    torch.manual_seed(2)
    nat, adv, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    p, q = F.softmax(nat, 1), F.softmax(adv, 1)
    total = 0.0
    for i in range(5):
        ce = -math.log(q[i, y[i]])
        wrong = max((c for c in range(4) if c != y[i]), key=lambda c: q[i, c].item())
        boost = -math.log(1.0001 - q[i, wrong].item() + 1e-12)
        kl = sum(p[i, c] * (math.log(p[i, c] + 1e-12) - math.log(q[i, c] + 1e-12)) for c in range(4))
        total += ce + boost + 5.0 * kl * (1.0000001 - p[i, y[i]].item())
    assert abs(mart_loss(nat, adv, y, beta=5.0).item() - total / 5) < 1e-4
