"""Shared fixtures: the real Fashion-MNIST, a small standard-trained model, its argmax-gated toy twin
and a naturally trained RA model (each built once per test session)."""

import pytest
import torch
import torch.nn.functional as F

from ancra.data import load_fashion_mnist
from ancra.models import create_model
from ancra.models.ra import RAOutput
from ancra.models.resnet import ResNet


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where torch sees a GPU and are skipped, saying why, elsewhere."""
    if torch.cuda.is_available():
        return
    why = f"needs a CUDA GPU: torch {torch.__version__} sees none (benchmarks/gpu.sh runs these on one)"
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


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


class ArgmaxGatedToy(ResNet):
    """An RA net whose logits are ``scale * onehot(argmax(last aux head))``: the prediction is the
    gate's and the output has no gradient at all (the extreme of the shattered-gradient pattern)."""

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__([1, 1, 2], [8, 16, 32], num_classes=10, in_channels=1, ra_blocks=1)
        self.scale = scale

    def forward_with_aux(self, x, labels=None):
        out = super().forward_with_aux(x, labels)
        j = out.aux_logits[-1].argmax(1) if labels is None else labels
        return RAOutput(self.scale * F.one_hot(j, 10).float(), out.aux_logits, out.features)


@pytest.fixture(scope="session")
def toy(trained_small):
    """Same weights as the plain model (identical state-dict keys): its aux head IS that model."""
    m = ArgmaxGatedToy()
    m.load_state_dict(trained_small.state_dict())
    return m.eval()


@pytest.fixture(scope="session")
def ra_trained(fmnist):
    """A real RANet (2 RA blocks) trained naturally for 300 steps on one thread: CE on the final and
    aux heads with label-driven masks (docs/METHOD.md, "Reverse Attention"). At inference its hard
    gate decides the class."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_with_ce(fmnist, ra_blocks=2)
    finally:
        torch.set_num_threads(old)
