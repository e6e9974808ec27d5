"""A cheap first look at the eps-0.2 question (issue 21, item 4): PGD-20 accuracy by eps on the
first N test images for the given checkpoints, so that the full-suite evaluation at eps 0.2
(``eval.sh eps0.2``) knows which models to compare.

    .venv/bin/python results/fmnist-v2/eps_probe.py CKPT [CKPT ...] [--n 500] [--eps 0.1 0.2 0.3]

PGD: 20 steps of eps/4 from a uniform random start, CE on the deployed model (the report's
``curve/eps/pgd`` points). An upper bound on the robust accuracy, never a result on its own.
The second table: accuracy under random sign noise of the same size (``x +- eps`` per pixel,
clipped to [0, 1]): how much of the accuracy under attack a model keeps against no attack at all.
``--masking-check EPS`` instead prints, at that eps, one and the worst of 3 PGD-50 runs (step
eps/10) for each checkpoint, and the accuracy of each on the first checkpoint's PGD-50 inputs
(transfer): two signs of gradient masking to look for. ``--features`` instead prints, for each
checkpoint and each eps, where the network absorbs random sign noise: the relative change
``|h(x + noise) - h(x)| / |h(x)|`` (mean over images) of the first conv layer's output (after its
BatchNorm and ReLU) and of each stage but the last (a ResNet of ``ancra.models``).
"""

import argparse
from pathlib import Path

import torch

from ancra.attacks import pgd
from ancra.checkpoint import load_model
from ancra.data.fmnist import load_fashion_mnist


def masking_check(paths: list[Path], x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    models = [load_model(path) for path in paths]
    print(f"eps {eps:g}, the first {len(x)} test images, accuracy (%)")
    print(f"| checkpoint | PGD-50, 1 run | worst of 3 runs | on {paths[0]}'s PGD-50 inputs |")
    print("|---|---:|---:|---:|")
    source_inputs = None
    for path, model in zip(paths, models):
        g = torch.Generator().manual_seed(0)
        runs = [pgd(model, x, y, eps=eps, step_size=eps / 10, steps=50, generator=g) for _ in range(3)]
        source_inputs = runs[0] if source_inputs is None else source_inputs
        with torch.no_grad():
            robust = torch.stack([model(xa).argmax(1) == y for xa in runs])
            transfer = (model(source_inputs).argmax(1) == y).float().mean()
        one, worst = robust[0].float().mean(), robust.all(0).float().mean()
        print(f"| {path} | {100 * one:.1f} | {100 * worst:.1f} | {100 * transfer:.1f} |")


def stage_features(model: torch.nn.Module, z: torch.Tensor) -> list[torch.Tensor]:
    """The first conv layer's output (after BatchNorm and ReLU) and each stage's but the last."""
    out = [torch.relu(model.bn1(model.conv1(z)))]
    for name in model._stage_names[:-1]:
        out.append(getattr(model, name)(out[-1]))
    return out


def relative_change(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    return ((noisy - clean).flatten(1).norm(dim=1) / clean.flatten(1).norm(dim=1)).mean().item()


def feature_change(paths: list[Path], x: torch.Tensor, eps_values: list[float]) -> None:
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, x.shape, generator=g) * 2 - 1
    print(f"Relative change of the features under sign noise of size eps, the first {len(x)} test images")
    print("(per eps: first conv / stage 1 / stage 2 ...)")
    print("| checkpoint | " + " | ".join(f"eps {e:g}" for e in eps_values) + " |")
    print("|---|" + "---:|" * len(eps_values))
    for path in paths:
        model = load_model(path)
        with torch.no_grad():
            clean = stage_features(model, x)
            cells = []
            for eps in eps_values:
                noisy = stage_features(model, (x + eps * signs).clamp(0, 1))
                cells.append(" / ".join(f"{relative_change(a, b):.2f}" for a, b in zip(noisy, clean)))
        print(f"| {path} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.25, 0.3])
    p.add_argument("--masking-check", type=float, metavar="EPS", help="restarts and transfer at this eps")
    p.add_argument("--features", action="store_true", help="where the network absorbs random sign noise")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = load_fashion_mnist(download=False)
    x, y = data.test_x[: a.n].float() / 255, data.test_y[: a.n]
    if a.masking_check:
        masking_check(a.checkpoints, x, y, a.masking_check)
        return
    if a.features:
        feature_change(a.checkpoints, x, a.eps)
        return
    print(f"PGD-20 accuracy (%) on the first {a.n} test images")
    print("| checkpoint | clean | " + " | ".join(f"eps {e:g}" for e in a.eps) + " |")
    print("|---|---:|" + "---:|" * len(a.eps))
    noise_rows = []
    for path in a.checkpoints:
        model = load_model(path)
        with torch.no_grad():
            cells = [f"{100 * (model(x).argmax(1) == y).float().mean():.1f}"]
            g = torch.Generator().manual_seed(0)
            signs = torch.randint(0, 2, x.shape, generator=g) * 2 - 1
            noise_rows.append(
                [f"{100 * (model((x + eps * signs).clamp(0, 1)).argmax(1) == y).float().mean():.1f}" for eps in a.eps]
            )
        for eps in a.eps:
            g = torch.Generator().manual_seed(0)
            x_adv = torch.cat(
                [
                    pgd(model, xb, yb, eps=eps, step_size=eps / 4, steps=20, generator=g)
                    for xb, yb in zip(x.split(250), y.split(250))
                ]
            )
            with torch.no_grad():
                cells.append(f"{100 * (model(x_adv).argmax(1) == y).float().mean():.1f}")
        print(f"| {path} | " + " | ".join(cells) + " |")
    print(f"\nAccuracy (%) under random sign noise of size eps, the first {a.n} test images")
    print("| checkpoint | " + " | ".join(f"eps {e:g}" for e in a.eps) + " |")
    print("|---|" + "---:|" * len(a.eps))
    for path, cells in zip(a.checkpoints, noise_rows):
        print(f"| {path} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
