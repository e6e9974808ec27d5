"""The training step: forward budget, configurations, and that it actually learns."""

import pytest
import torch

from ancra.models import create_model
from ancra.objectives import Objective, training_step


def _setup(ra_blocks=2, seed=0):
    torch.manual_seed(seed)
    model = create_model("narrow_resnet", 10, 1, ra_blocks=ra_blocks, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt


def _count_forwards(model):
    calls = []
    model.conv1.register_forward_hook(lambda m, i, o: calls.append((m.training, i[0].shape[0])))
    return calls


@pytest.mark.parametrize(
    "method,zeta,expected_train_forwards",
    [
        ("trades", 3.0, 3),
        ("pgd_at", 3.0, 3),
        ("mart", 3.0, 3),
        ("trades", 0.0, 2),
        ("pgd_at", 0.0, 1),
        ("standard", 0.0, 1),
    ],
)
def test_forward_budget_attacks_in_one_batch_and_no_extra_forwards(method, zeta, expected_train_forwards):
    model, opt = _setup()
    calls = _count_forwards(model)
    x, y = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    obj = Objective(method=method, zeta=zeta, eps=0.1, step_size=0.03, steps=4)
    metrics = training_step(model, opt, x, y, obj)
    attack = [c for c in calls if not c[0]]
    train = [c for c in calls if c[0]]
    # the untargeted anchors and the targeted negatives travel as ONE batch through each attack step
    if method != "standard":
        assert len(attack) == 4 + (method == "trades" and obj.attack_loss == "kl")
        assert all(n == (40 if zeta else 20) for _, n in attack)
    else:
        assert attack == []
    assert len(train) == expected_train_forwards and all(n == 20 for _, n in train)
    assert torch.isfinite(metrics["loss"])
    assert ("anc_loss" in metrics) == (zeta > 0)


def test_repeated_ancra_steps_lower_the_loss_on_a_fixed_batch(fmnist):
    model, opt = _setup()
    x, y = fmnist[0][:64], fmnist[1][:64]
    obj = Objective(method="trades", zeta=3.0, eps=0.1, step_size=0.025, steps=3)
    g = torch.Generator().manual_seed(0)
    losses = [training_step(model, opt, x, y, obj, generator=g)["loss"].item() for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_step_is_deterministic_for_a_seed(fmnist):
    x, y = fmnist[0][:32], fmnist[1][:32]
    obj = Objective(method="mart", beta=5.0, zeta=3.0, eps=0.1, step_size=0.025, steps=2)
    results = []
    for _ in range(2):
        model, opt = _setup()
        training_step(model, opt, x, y, obj, generator=torch.Generator().manual_seed(1))
        results.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_ablations_are_configurations_of_one_code_path(fmnist):
    """ANC only (no RA), RA only (no ANC), symmetric ANC, natural negatives, k=2, hard negatives."""
    x, y = fmnist[0][:32], fmnist[1][:32]
    cases = [
        (0, dict(zeta=3.0)),  # ANC only
        (2, dict(zeta=0.0)),  # RA only
        (2, dict(zeta=3.0, alpha=0.5)),
        (2, dict(zeta=3.0, negatives="random")),
        (2, dict(zeta=3.0, k=2, negatives="hard_adv", warmup=0)),
        (2, dict(zeta=3.0, attack_loss="kl")),
    ]
    for ra, kw in cases:
        model, opt = _setup(ra_blocks=ra)
        m = training_step(model, opt, x, y, Objective(method="trades", eps=0.1, step_size=0.03, steps=2, **kw), epoch=1)
        assert torch.isfinite(m["loss"]) and 0 <= m["nat_acc"] <= 1


def test_objective_validation():
    with pytest.raises(ValueError, match="unknown method"):
        Objective(method="fgsm_at")
    with pytest.raises(ValueError, match="negative strategy"):
        Objective(negatives="hardest")
    with pytest.raises(ValueError, match="alpha"):
        Objective(alpha=2)
