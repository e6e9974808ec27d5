"""Shared fixtures: a slice of the real Fashion-MNIST and a small standard-trained model."""

import pytest
import torch
import torch.nn.functional as F

from ancra.data import load_fashion_mnist
from ancra.models import create_model


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (Debian package), as float [0,1] tensors: (x_train, y_train, x_test, y_test)."""
    d = load_fashion_mnist(download=False)
    return d.train_x.float() / 255, d.train_y, d.test_x.float() / 255, d.test_y


@pytest.fixture(scope="session")
def trained_small(fmnist):
    """A narrow plain ResNet trained with CE for 300 steps on F-MNIST (about 80% clean)."""
    return train_with_ce(fmnist, ra_blocks=0)


def train_with_ce(fmnist, ra_blocks: int, steps: int = 300):
    """A narrow ResNet (width 8) trained naturally for ``steps`` batches of 64 of the first 9600
    F-MNIST training images: CE on the final head plus, with RA, on every aux head (label masks)."""
    x, y = fmnist[0][:9600], fmnist[1][:9600]
    torch.manual_seed(0)
    model = create_model("narrow_resnet", 10, 1, ra_blocks=ra_blocks, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        i = (step * 64) % 9600
        out = model.forward_with_aux(x[i : i + 64], y[i : i + 64])
        loss = F.cross_entropy(out.logits, y[i : i + 64]) + sum(
            F.cross_entropy(a, y[i : i + 64]) for a in out.aux_logits
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
