"""`ancra bench` runs and prints one well-formed JSON line (timings themselves live in docs/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.toml"


@pytest.mark.parametrize("extra", [[], ["--eval"], ["--precision", "bf16"]])
def test_bench_prints_one_json_line(extra):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ancra",
            "bench",
            "--config",
            str(SMOKE),
            "--batch",
            "8",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["mode"] == ("eval" if "--eval" in extra else "train")
    assert out["images_per_s"] > 0 and out["step_s"] > 0 and len(out["step_s_all"]) == 2
    assert abs(out["images_per_s"] - 8 / out["step_s"]) < 1e-6 * out["images_per_s"]
    assert out["flops_per_step"] > 0 and out["peak_flops_per_s"] > 0
    assert abs(out["fraction_of_peak"] - out["flops_per_step"] / out["step_s"] / out["peak_flops_per_s"]) < 1e-9


def test_flop_count_of_an_attack_step_matches_the_convolution_formula():
    """count_flops sees the forward and both backward convolutions of an input-gradient step
    (what every attack step runs), with torch's public or private counter, whichever this torch has."""
    from ancra.bench import count_flops

    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False).requires_grad_(False)
    x = torch.rand(2, 4, 10, 10, requires_grad=True)

    def step():
        torch.autograd.grad(conv(x).sum(), x)

    forward = 2 * 2 * 8 * 4 * 9 * 10 * 10  # 2 * N * C_out * C_in * k * k * H * W
    assert count_flops(step) == 2 * forward  # forward + input gradient (no weight gradient)
