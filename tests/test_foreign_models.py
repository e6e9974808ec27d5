"""`ancra eval` on models built outside ancra: a state dict of a registry architecture, a TorchScript
file and a module:callable, each equal to evaluating the same network through the Python API,
re-checkable with `ancra verify`, with RobustBench's model-info file, and one-line refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ancra.evaluation import evaluate, load_per_example
from ancra.evaluation.robustbench import FIELDS, model_info

# torch.jit.trace is deprecated in this torch; users still have TorchScript files to evaluate
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.trace")
STUDY = Path(__file__).resolve().parents[1] / "results" / "fmnist"
N = 32
EVAL = ["--suite", "standard", "--quick", "--n-examples", str(N), "--batch-size", "16", "--device", "cpu"]

NET_SOURCE = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    """A plain torch classifier, unrelated to ancra: normalisation inside, images in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.286))
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 14 * 14, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x - self.mean))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def build():
    net = SmallCNN()
    net.load_state_dict(torch.load(__file__.replace("mynet.py", "weights.pt"), weights_only=True))
    return net
'''


def _run(*args, cwd=None, env=None):
    cmd = [sys.executable, "-m", "ancra", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, fmnist):
    """The SmallCNN trained 150 steps on F-MNIST, saved three ways outside ancra."""
    root = tmp_path_factory.mktemp("foreign")
    (root / "mynet.py").write_text(NET_SOURCE)
    sys.path.insert(0, str(root))
    try:
        import mynet
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    net = mynet.SmallCNN()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = fmnist[0], fmnist[1]
    for step in range(150):
        i = step * 64
        loss = F.cross_entropy(net(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    torch.save(net.state_dict(), root / "weights.pt")
    torch.jit.trace(net, x[:2]).save(str(root / "net.ts"))
    return root, net


def _tensors(out):
    return load_per_example(out / "per_example.pt")["tensors"]


@pytest.fixture(scope="module")
def api_report(foreign, fmnist, tmp_path_factory):
    """The same network through the Python API: the reference every route must equal."""
    out = tmp_path_factory.mktemp("api")
    x, y = fmnist[2][:N], fmnist[3][:N]
    evaluate(foreign[1], x, y, out_dir=out, eps=0.1, suite="standard", quick=True, batch_size=16, dataset="fmnist")
    return out


@pytest.mark.parametrize("route", ["torchscript", "module"])
def test_foreign_routes_equal_the_python_api_and_verify(foreign, api_report, tmp_path, route):
    root, _ = foreign
    out = tmp_path / route
    how = ["--torchscript", root / "net.ts"] if route == "torchscript" else ["--model", "mynet:build"]
    r = _run("eval", *how, "--dataset", "fmnist", "--eps", "1/10", *EVAL, "--out", out, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = _tensors(api_report), _tensors(out)
    for key in ref:
        if key.startswith(("clean", "labels", "robust/", "correct/")):
            assert torch.equal(ref[key], got[key]), key
    rep = json.loads((out / "report.json").read_text())
    assert rep["meta"]["model_source"]["kind"] == route and rep["is_ra_model"] is False
    # verify: a module model is rebuilt only when --model is given again
    if route == "module":
        v = _run("verify", out, cwd=root)
        assert v.returncode == 2 and "pass --model mynet:build" in v.stderr
        v = _run("verify", out, "--model", "mynet:build", cwd=root)
    else:
        v = _run("verify", out)
    assert v.returncode == 0, v.stdout + v.stderr


def test_state_dict_route_on_a_study_checkpoint_equals_its_ancra_file(tmp_path):
    """The ANCRA-PGD study model as a bare state dict with DDP and torch.compile prefixes, as the
    reference code or another trainer would save it: the same report as from ancra's file,
    adaptive attacks included (RA heads are recognised with --ra-blocks 2)."""
    ckpt = torch.load(STUDY / "ancra-pgd.pt", weights_only=True)
    torch.save(
        {"epoch": 2, "model": {f"module._orig_mod.{k}": v for k, v in ckpt["state_dict"].items()}}, tmp_path / "sd.pt"
    )
    args = ["--suite", "full", "--quick", "--n-examples", "16", "--batch-size", "16", "--device", "cpu"]
    a = _run("eval", STUDY / "ancra-pgd.pt", *args, "--out", tmp_path / "ancra")
    assert a.returncode == 0, a.stderr[-3000:]
    foreign = ["--arch", "narrow_resnet", "--arch-option", "width=8", "--ra-blocks", "2", "--dataset", "fmnist"]
    b = _run("eval", "--state-dict", tmp_path / "sd.pt", *foreign, "--eps", "0.1", *args, "--out", tmp_path / "sd")
    assert b.returncode == 0, b.stderr[-3000:]
    ta, tb = _tensors(tmp_path / "ancra"), _tensors(tmp_path / "sd")
    for key in ta:
        if key.startswith(("clean", "robust/", "correct/")):
            assert torch.equal(ta[key], tb[key]), key
    rep = json.loads((tmp_path / "sd" / "report.json").read_text())
    assert rep["is_ra_model"] and rep["adaptive_applied"]["A6 transfer"].startswith("not run")
    assert rep["meta"]["model_source"]["arch_options"] == {"width": 8}
    v = _run("verify", tmp_path / "sd")
    assert v.returncode == 0, v.stdout + v.stderr


def test_robustbench_model_info(foreign, tmp_path):
    root, _ = foreign
    out = tmp_path / "rb"
    info = ["--info", "name=Small CNN", "--info", "authors=A. Author", "--info", "additional_data=false"]
    r = _run("eval", "--torchscript", root / "net.ts", "--dataset", "fmnist", *EVAL, "--out", out,
             "--format", "robustbench", *info)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    mi = json.loads((out / "robustbench.json").read_text())
    # the fields and JSON types of RobustBench's model_info/<dataset>/Linf/*.json files
    assert set(mi) - {"footnote"} == set(FIELDS) - {"footnote"}
    for key, value in mi.items():
        assert isinstance(value, FIELDS[key]), key
    assert mi["eps"] == "1/10" and mi["dataset"] == "fmnist" and mi["name"] == "Small CNN"
    assert (
        mi["clean_acc"] == f"{100 * rep['clean_acc']:.2f}"
        and mi["autoattack_acc"] == f"{100 * rep['autoattack_acc']:.2f}"
    )
    assert "quick" in mi["footnote"] and f"{N} test examples" in mi["footnote"] and mi["unreliable"] is False
    # adaptive worst case below AutoAttack: unreliable, with the numbers in the footnote
    worse = model_info({**rep, "worst_case_acc": rep["autoattack_acc"] - 0.1, "suite": "full"})
    assert worse["unreliable"] is True and "below AutoAttack" in worse["footnote"]


def _fails(args, tmp_path, cwd=None):
    out = tmp_path / "never"
    r = _run("eval", *args, *EVAL, "--out", out, cwd=cwd)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not out.exists()
    (line,) = r.stderr.strip().splitlines()
    return line


def test_foreign_model_errors_are_one_line_and_write_nothing(foreign, tmp_path):
    root, _ = foreign
    (root / "bad_module.py").write_text("import not_a_module_anywhere\n")
    (root / "tuple_net.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class T(nn.Module):\n    def forward(self, x):\n        return x.flatten(1)[:, :10], 0\n"
        "def build():\n    return T()\n"
    )
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    from ancra.models import create_model

    torch.save(create_model("narrow_resnet", 10, 1, width=4).state_dict(), tmp_path / "narrow.pt")  # default width 16
    (tmp_path / "not_ts.pt").write_bytes(b"not a zip at all")
    cases = [
        (["--arch", "narrow_resnet", "--state-dict", tmp_path / "other.pt", "--dataset", "fmnist"], "does not fit"),
        # same keys, other shapes: one line too
        (["--arch", "narrow_resnet", "--state-dict", tmp_path / "narrow.pt", "--dataset", "fmnist"], "size mismatch"),
        (["--torchscript", tmp_path / "not_ts.pt", "--dataset", "fmnist"], "is not a TorchScript file"),
        (["--model", "bad_module:build", "--dataset", "fmnist"], "cannot import bad_module"),
        (["--model", "tuple_net:build", "--dataset", "fmnist"], "must return (N, 10) logits"),
        (["--torchscript", root / "net.ts", "--dataset", "mnist-ish"], "unknown dataset 'mnist-ish'"),
        (["--torchscript", root / "net.ts"], "needs --dataset NAME"),
        (["--arch", "resnet18", "--dataset", "fmnist"], "--arch and --arch-option go with --state-dict"),
        ([STUDY / "standard.pt", "--torchscript", root / "net.ts"], "name one model"),
    ]
    for args, said in cases:
        line = _fails(args, tmp_path, cwd=root)
        assert said in line, (args, line)


def test_eps_fraction_and_bad_eps():
    from ancra.cli import _eps

    assert _eps("8/255") == 8 / 255 and _eps("0.1") == 0.1
    r = _run("eval", STUDY / "standard.pt", "--eps", "8/zero", "--out", "x")
    assert r.returncode == 2 and "expected a number or a fraction such as 8/255" in r.stderr
    assert os.path.exists("x") is False
