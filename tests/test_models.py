"""Reverse Attention models: shapes, mask sources, gradient paths, reference naming."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ancra.errors import UserError
from ancra.models import create_model

ARCHS = [
    ("resnet18", 3, 32, {}, 512),
    ("resnet34", 3, 32, {}, 512),
    ("preactresnet18", 3, 64, {"pool_size": 2}, 2048),
    ("wrn28_10", 3, 32, {}, 640),
    ("wrn34_10", 3, 32, {}, 640),
    ("narrow_resnet", 1, 28, {}, 64),
]


@pytest.mark.parametrize("name,c,size,kw,dim", ARCHS)
def test_shapes_every_architecture(name, c, size, kw, dim):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=c, **kw)
    x = torch.rand(2, c, size, size)
    out = model.forward_with_aux(x, torch.tensor([1, 5]))
    assert out.logits.shape == (2, 7)
    assert len(out.aux_logits) == 2 and all(a.shape == (2, 7) for a in out.aux_logits)
    assert out.features.shape == (2, dim)
    assert model(x).shape == (2, 7)
    plain = create_model(name, num_classes=7, in_channels=c, ra_blocks=0, **kw).forward_with_aux(x)
    assert plain.aux_logits == [] and plain.features.shape == (2, dim)


def small(ra_blocks=2, seed=0):
    torch.manual_seed(seed)
    return create_model("narrow_resnet", 10, 1, ra_blocks=ra_blocks, width=8)


def test_eval_output_independent_of_labels_and_mode_untouched():
    model = small()
    x = torch.rand(6, 1, 28, 28)
    for mode in (True, False):
        model.train(mode)
        model(x)
        assert model.training is mode  # forward never flips the mode
    model.eval()
    ref = model(x)
    # model(x) takes no labels: equals forward_with_aux without labels, any batch order
    assert torch.allclose(model.forward_with_aux(x).logits, ref)
    perm = torch.randperm(6)
    assert torch.allclose(model(x[perm]), ref[perm], atol=1e-5)


def test_label_masks_in_training_forward_and_predicted_masks_at_inference():
    model = small().eval()
    x = torch.rand(8, 1, 28, 28)
    out = model.forward_with_aux(x)
    pred_masks = [a.argmax(1) for a in out.aux_logits]
    # predicted-label masks == labels equal to each block's own prediction (first block decides
    # the first mask; with labels = the first block's prediction the first block agrees)
    same = model.forward_with_aux(x, pred_masks[0])
    assert torch.allclose(same.aux_logits[0], out.aux_logits[0])
    # labels change the result: masks come from the labels
    other = (pred_masks[-1] + 1) % 10
    lab = model.forward_with_aux(x, other)
    assert not torch.allclose(lab.logits, out.logits)
    # by hand: the last block's mask with label j gives fc(pooled * W[j])
    fc = model.fc
    pooled_last = lab.features / fc.weight[other]
    assert torch.allclose(fc(pooled_last * fc.weight[other]), lab.logits, atol=1e-5)
    # labels drive the masks even in train mode vs eval mode (BN aside): same in both modes
    model.train()
    with torch.no_grad():
        a = model.forward_with_aux(x, other).aux_logits[0]
    assert a.shape == (8, 10)


def test_masks_not_detached_gradient_reaches_fc_through_mask():
    model = small(ra_blocks=1).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    out = model.forward_with_aux(x, y)
    g_model = torch.autograd.grad(out.logits.sum(), model.fc.weight)[0]
    # the same forward by hand, once with the mask attached and once detached
    pooled = model.pool(model.final_stage(model.stem(x)))  # ResNet: no post-activation
    for detach, should_match in ((False, True), (True, False)):
        mask = model.fc.weight[y]
        mask = mask.detach() if detach else mask
        logits = model.fc(pooled * mask)
        assert torch.allclose(logits, out.logits, atol=1e-5)
        g = torch.autograd.grad(logits.sum(), model.fc.weight)[0]
        assert torch.allclose(g, g_model, atol=1e-5) is should_match


def test_ra_blocks_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match="ra_blocks"):
        create_model("resnet18", 10, ra_blocks=3)
    with pytest.raises(UserError, match="unknown model"):
        create_model("resnet1000", 10)


# --- reference naming: a module written the way the reference ResNet18_RA is described --------
class _RefBlock(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.shortcut = nn.Sequential()
        if s != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class _ReferenceStyleResNet18RA(nn.Module):
    """Independent re-statement of docs/METHOD.md, "Reverse Attention": the reference flips label source by mode."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cfg, i = [(64, 1), (128, 2), (256, 2), (512, 2)], 64
        for n, (o, s) in enumerate(cfg):
            setattr(self, f"layer{n + 1}", nn.Sequential(_RefBlock(i, o, s), _RefBlock(o, o, 1)))
            i = o
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x, y=None):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        for b in range(2):
            out = self.layer4[b](out)
            aux = self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
            j = y if self.training else aux.argmax(1)
            out = out * self.fc.weight[j][:, :, None, None]
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_reference_resnet18_ra_state_dict_loads_strict_and_matches_both_modes():
    torch.manual_seed(0)
    ref = _ReferenceStyleResNet18RA()
    # non-trivial BN statistics
    ref.train()
    with torch.no_grad():
        ref(torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    ours = create_model("resnet18", 10)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([3, 1, 4, 1])
    ref.eval(), ours.eval()
    assert torch.allclose(ours(x), ref(x), atol=1e-4)
    ref.train(), ours.train()
    with torch.no_grad():
        assert torch.allclose(ours.forward_with_aux(x, y).logits, ref(x, y), atol=1e-4)


def test_preact_pool2_mask_weights_each_cell_by_its_own_classifier_weights():
    torch.manual_seed(0)
    model = create_model("preactresnet18", 5, ra_blocks=1, pool_size=2).eval()
    x, y = torch.rand(2, 3, 64, 64), torch.tensor([0, 3])
    out = model.forward_with_aux(x, y)
    # recompute by hand: mask map = W[y] reshaped (512,2,2), upsampled x4, applied to the 8x8 map
    h = model.stem(x)
    h = model.layer4[0](h)
    z = F.relu(model.bn(model.layer4[1](h)))
    mask = model.linear.weight[y].view(2, 512, 2, 2)
    mask = F.interpolate(mask, scale_factor=4, mode="nearest")
    expected = model.linear(F.avg_pool2d(z * mask, 4).flatten(1))
    assert torch.allclose(out.logits, expected, atol=1e-4)
