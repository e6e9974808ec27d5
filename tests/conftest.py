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
    x, y = fmnist[0][:9600], fmnist[1][:9600]
    torch.manual_seed(0)
    model = create_model("narrow_resnet", 10, 1, ra_blocks=0, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(300):
        i = (step * 64) % 9600
        loss = F.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
