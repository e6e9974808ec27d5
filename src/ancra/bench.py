"""``ancra bench``: time whole training steps (or evaluation attacks) of a config on synthetic data.

The result is one JSON line: median step time, images/s, the FLOPs of one step counted by
``torch.utils.flop_counter`` (forward + backward of every op actually run: attacks, training
forwards, backward), the achieved FLOP/s, and its fraction of a peak measured on the same device in
the same run (the faster of a large matmul and a large 3x3 convolution, in the same dtype), and the
CPU's instruction set. Benchmarks are not tests: numbers go to docs/.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from .attacks import pgd
from .config import Config
from .data.registry import dataset_info
from .distributed import resolve_device
from .errors import UserError
from .hardware import check_precision, compile_network, configure_kernels, device_info, use_channels_last
from .models import create_model
from .objectives import training_step
from .precision import autocast_context


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, flops_per_call: float, device: torch.device, seconds: float) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        _sync(device)
        if time.perf_counter() - start > seconds:
            break
    return flops_per_call * reps / (time.perf_counter() - start)


def _largest_quick(sizes, make_call, device: torch.device, call_s: float = 0.05):
    """The first size, going up ``sizes``, whose single call takes over ``call_s`` (or the last):
    large enough to reach the peak, small enough to finish where the dtype is emulated (a 2048^3
    bf16 matmul takes minutes through ATen's reference gemm on a CPU without native bf16)."""
    for size in sizes:
        call = make_call(size)
        call()
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        if time.perf_counter() - start > call_s:
            break
    return size, call


def measure_peaks(device: torch.device, precision: str, seconds: float = 1.0) -> dict:
    """Practical peaks on ``device`` in the benchmark's dtype: a large square matmul and a large
    3x3 convolution (on CPUs oneDNN's convolutions outrun the BLAS matmul, so the matmul alone
    would put a convolution network above "100%" of peak). Sizes grow until one call is slow
    enough to be timed well, so the measurement takes seconds whatever the dtype costs here."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cuda = device.type == "cuda"

    def matmul_of(n):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        return lambda: a @ b

    n, call = _largest_quick((8192,) if cuda else (256, 512, 1024, 2048), matmul_of, device)
    matmul = _rate(call, 2 * n**3, device, seconds)

    ch, hw = (256, 32) if cuda else (256, 16)

    def conv_of(batch):
        x = torch.randn(batch, ch, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(ch, ch, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        return lambda: torch.nn.functional.conv2d(x, w, padding=1)

    batch, call = _largest_quick((256,) if cuda else (4, 16, 64), conv_of, device)
    conv = _rate(call, 2 * batch * ch * ch * 9 * hw * hw, device, seconds)
    return {"matmul": matmul, "conv3x3": conv, "matmul_n": n, "conv_batch": batch}


def count_flops(fn) -> int | None:
    """FLOPs of every op ``fn`` runs (forward and backward), by torch's FLOP counter; None where
    this torch's counter cannot count a step (the bench then reports no FLOP figures).

    Since torch 2.4 ``FlopCounterMode`` tracks modules with backward hooks that ``autograd.grad``
    w.r.t. an input leaf (every attack step) does not support, so only its global counting mode
    (``_FlopCounterMode``) is entered; older versions are that mode themselves. A torch whose
    counter changed again is caught here, not by a crash (tests/test_bench.py checks the count)."""
    from torch.utils import flop_counter

    try:
        if not hasattr(flop_counter, "_FlopCounterMode"):  # torch < 2.4: no module tracker
            with flop_counter.FlopCounterMode(display=False) as counter:
                fn()
            return int(counter.get_total_flops())
        return _count_global_flops(flop_counter, fn)
    except (AttributeError, TypeError, RuntimeError) as e:
        print(
            f"warning: torch {torch.__version__}'s FLOP counter cannot count this step ({e}); no FLOP figures",
            file=sys.stderr,
        )
        return None


def _count_global_flops(flop_counter, fn) -> int:
    class GlobalFlopCounter(flop_counter.FlopCounterMode):
        def __enter__(self):
            self.flop_counts.clear()
            self.mode = flop_counter._FlopCounterMode(self)
            self.mode.__enter__()
            return self

        def __exit__(self, *args):
            out = self.mode.__exit__(*args)
            self.mode = None
            return out

    with GlobalFlopCounter(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def run_bench(
    cfg: Config,
    *,
    batch: int,
    steps: int,
    device: str,
    precision: str | None = None,
    compile: bool | None = None,
    eval_mode: bool = False,
    warmup: int = 2,
    seed: int = 0,
) -> dict:
    """Time ``steps`` training steps (or evaluation attacks) of ``cfg`` after ``warmup``.

    ``precision`` and ``compile`` default to the config's; everything else the trainer decides
    (kernel choices of ``train.deterministic``, TF32, layout, compiled network) is taken from the
    config the same way, so the bench times what the config would train with."""
    if batch < 2 or steps < 1:
        raise UserError("--batch must be >= 2 and --steps >= 1")
    precision = cfg.train.precision if precision is None else precision
    compile = cfg.train.compile if compile is None else compile
    dev = torch.device(resolve_device(device))
    configure_kernels(dev, cfg.train.deterministic, precision)
    info = dataset_info(cfg.data.dataset)  # synthetic batches of the dataset's shape: no files needed
    channels, size, classes = info.channels, info.size, info.num_classes
    torch.manual_seed(seed)
    net = create_model(cfg.model.name, classes, channels, **cfg.model.kwargs()).to(dev)
    x = torch.rand(batch, channels, size, size, device=dev)
    y = torch.arange(batch, device=dev) % classes
    # the layout and precision the trainer would use on this machine (ancra.hardware)
    channels_last = use_channels_last(cfg.train.channels_last, net, dev)
    try:
        check_precision(precision, dev)
    except UserError as e:  # the bench still measures what the refused setting would cost
        print(f"warning: {e}; ancra bench measures it anyway", file=sys.stderr)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model = compile_network(net, cfg.train.compile_backend) if compile else net
    obj = cfg.objective
    opt = torch.optim.SGD(net.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
    gen = torch.Generator(device=dev).manual_seed(seed)

    if eval_mode:
        # evaluation attack throughput: PGD with the config's steps on the clean batch, eval mode
        net.eval()

        def step():
            with autocast_context(dev, precision):
                pgd(model, x, y, eps=obj.eps, step_size=obj.eps / 4, steps=obj.steps, generator=gen)
    else:

        def step():
            training_step(model, opt, x, y, obj, epoch=0, generator=gen, precision=precision, sync_checks=False)

    for _ in range(warmup):
        step()
    _sync(dev)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    flops = count_flops(step)
    peaks = measure_peaks(dev, precision)
    hardware = device_info(dev)
    peak_sizes = {k: peaks.pop(k) for k in ("matmul_n", "conv_batch")}
    peak = max(peaks.values())
    achieved = flops / step_s if flops is not None else None
    return {
        "mode": "eval" if eval_mode else "train",
        "config": {
            "model": cfg.model.name,
            "dataset": cfg.data.dataset,
            "method": obj.method,
            "zeta": obj.zeta,
            "attack_steps": obj.steps,
            "ra_blocks": cfg.model.ra_blocks,
        },
        "batch": batch,
        "steps": steps,
        "device": device,
        "device_name": hardware.get("gpu", hardware["cpu"]),
        "hardware": hardware,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "compile": compile,
        "deterministic": cfg.train.deterministic,
        "tf32": dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": dev.type == "cuda" and torch.backends.cudnn.benchmark,
        "channels_last": channels_last,
        "step_s": step_s,
        "step_s_all": times,
        "images_per_s": batch / step_s,
        "flops_per_step": flops,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak,
        "peak_source": max(peaks, key=peaks.get),
        "peaks_flops_per_s": peaks,
        "peak_sizes": peak_sizes,
        "fraction_of_peak": achieved / peak if achieved is not None else None,
        "torch": torch.__version__,
    }
