"""Weight gradients of registry models in the layout the trainer picks, against float64 NCHW.

Run as a script by tests/test_hardware.py in a subprocess (so that ``ONEDNN_MAX_CPU_ISA`` applies
from the process start and a hang is a subprocess timeout): prints one JSON line with, per model,
the layout used and the worst relative error ``||g32 - g64|| / ||g64||`` over its convolution
weights, in that layout and in NCHW.

    python tests/layout_gradcheck.py [--force-channels-last] NAME:IN_CHANNELS:SIZE:BATCH[:KEY=INT]...
"""

import json
import sys

import torch
import torch.nn.functional as F

from ancra.hardware import use_channels_last
from ancra.models import create_model


def relative_errors(name: str, in_channels: int, size: int, kw: dict, force: bool, batch: int) -> dict:
    """The layout the trainer picks, and the worst error of the fp32 weight gradients against the
    float64 NCHW ones, in that layout and in NCHW (the tolerance fp32 itself sets)."""
    torch.manual_seed(0)
    model = create_model(name, 10, in_channels, **kw).double().train()
    x = torch.rand(batch, in_channels, size, size, dtype=torch.float64)
    y = torch.arange(batch) % 10

    def grads(net, inputs):
        net.zero_grad()
        out = net.forward_with_aux(inputs, y)
        loss = F.cross_entropy(out.logits, y) + sum(F.cross_entropy(a, y) for a in out.aux_logits)
        loss.backward()
        return {n: p.grad.double().clone() for n, p in net.named_parameters() if p.grad is not None}

    reference = grads(model, x)
    # per convolution, relative to its own gradient, floored at 1e-4 of the whole gradient: a
    # tensor whose gradient is ~1e-7 of the total (a 1-channel shortcut) is all rounding in fp32
    total = torch.cat([g.flatten() for g in reference.values()]).norm()

    def worst(got):
        return max(
            float((got[n] - g).norm() / torch.maximum(g.norm(), 1e-4 * total))
            for n, g in reference.items()
            if g.dim() == 4
        )

    fp32 = model.float()
    nchw = worst(grads(fp32, x.float()))
    channels_last = True if force else use_channels_last("auto", fp32, torch.device("cpu"))
    chosen = nchw
    if channels_last:
        fp32 = fp32.to(memory_format=torch.channels_last)
        chosen = worst(grads(fp32, x.float().contiguous(memory_format=torch.channels_last)))
    return {"channels_last": channels_last, "rel_err": chosen, "rel_err_nchw": nchw}


def main(argv: list[str]) -> None:
    force = "--force-channels-last" in argv
    torch.set_num_threads(2)
    results = {}
    for spec in (a for a in argv if not a.startswith("--")):
        name, c, size, batch, *rest = spec.split(":")
        kw = {k: int(v) for k, v in (r.split("=") for r in rest)}
        results[spec] = relative_errors(name, int(c), int(size), kw, force, int(batch))
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "results": results}))


if __name__ == "__main__":
    main(sys.argv[1:])
