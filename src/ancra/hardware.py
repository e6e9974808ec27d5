"""What the machine can do safely and fast: the CPU's instruction set, native bf16, and the
memory layout (channels_last or not) a network trains in.

**channels_last on CPUs (oneDNN issue 6035).** oneDNN's AVX2 kernel for the weight gradient of a
1x1 convolution with stride > 1 (jit_1x1:avx2 backward_weights, also used on AVX2-VNNI CPUs) copies
a strided NHWC source into a workspace sized for whole blocks of 8 input channels; with fewer than
8 input channels it writes past that workspace. Depending on the machine this hangs (threads
spinning forever), corrupts the heap (``free(): invalid size``) or silently returns weight gradients
off by up to two orders of magnitude. NCHW sources, stride 1 and 8 or more input channels take
other paths and are exact. Measured with torch 2.13.0 (oneDNN 3.12) on an AVX-512 machine with the
ISA capped (``ONEDNN_MAX_CPU_ISA=AVX2`` and ``AVX2_VNNI``: 2-7 input channels wrong, 1 and 8-19
right; uncapped AVX-512, SSE4.1 and AVX: every channel count right), see docs/PERFORMANCE.md.

The rule, the same on every CPU (the ISA oneDNN runs can be capped independently of what ATen
reports, and the layout never changes the result, only its speed): a network trains in
channels_last on a CPU only if every 1x1 convolution with stride or padding has at least
:data:`MIN_NHWC_1X1_IN_CHANNELS` input channels. CUDA is not affected.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
from torch import nn

from .errors import UserError

#: input channels a strided 1x1 convolution needs before a CPU may run it in channels_last
#: (the AVX2 kernel's block of 8 input channels)
MIN_NHWC_1X1_IN_CHANNELS = 8

# values of ONEDNN_MAX_CPU_ISA (and its older name DNNL_MAX_CPU_ISA) below AVX512_CORE_BF16:
# oneDNN then emulates bf16 although the CPU may have it
_ISA_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> tuple[str, frozenset[str]]:
    """The processor's name and flags from the first CPU of /proc/cpuinfo (read once)."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break  # the flags line ends the first CPU's block after its name
    except OSError:
        pass
    return name, flags


def onednn_isa_cap() -> str | None:
    """The ISA cap set by ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``), upper case, or None."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap else None


def native_bf16() -> bool:
    """Whether bf16 runs natively on this CPU: avx512_bf16 or AMX, used by both ATen and oneDNN
    (not capped below it). Without it, bf16 is emulated and many times slower than fp32."""
    if not ({"avx512_bf16", "amx_bf16"} & _proc_cpuinfo()[1]):
        return False
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    return onednn_isa_cap() not in _ISA_CAPS_WITHOUT_BF16


def cpu_info() -> dict:
    """The CPU facts every measurement records: ATen's capability (AVX512, AVX2, ...), oneDNN's ISA
    cap, the flags that decide bf16 speed, the processor's name and the thread count."""
    name, flags = _proc_cpuinfo()
    return {
        "cpu": name,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": onednn_isa_cap(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "native_bf16": native_bf16(),
        "threads": torch.get_num_threads(),
    }


def device_info(device: torch.device | str) -> dict:
    """:func:`cpu_info`, plus the GPU's name when ``device`` is a CUDA device."""
    device = torch.device(device)
    info = cpu_info()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def unsafe_nhwc_convs(model: nn.Module) -> list[str]:
    """Names of the convolutions that would reach the broken oneDNN kernel in channels_last on a
    CPU: 1x1, stride or padding > 0, fewer than :data:`MIN_NHWC_1X1_IN_CHANNELS` input channels."""
    bad = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.in_channels < MIN_NHWC_1X1_IN_CHANNELS:
            strided = tuple(m.stride) != (1, 1)
            padded = isinstance(m.padding, str) or any(p != 0 for p in m.padding)
            if strided or padded:
                bad.append(name)
    return bad


def use_channels_last(setting: bool | str, model: nn.Module, device: torch.device) -> bool:
    """Resolve ``train.channels_last`` (``"auto"``, true or false) for ``model`` on ``device``.

    ``"auto"``: channels_last on CUDA, and on a CPU where :func:`unsafe_nhwc_convs` finds nothing.
    ``true`` where it is unsafe is refused with a :class:`UserError` (never a hang)."""
    if setting is False:
        return False
    bad = unsafe_nhwc_convs(model) if device.type == "cpu" else []
    if not bad:
        return True
    if setting == "auto":
        return False
    raise UserError(
        f"train.channels_last = true is unsafe on a CPU for this model: {bad[0]} is a strided 1x1 convolution "
        f"with fewer than {MIN_NHWC_1X1_IN_CHANNELS} input channels, whose weight gradient oneDNN computes "
        f'wrongly or hangs on in channels_last (oneDNN issue 6035): set train.channels_last = "auto" or false, '
        f"or widen the model (model.width >= {MIN_NHWC_1X1_IN_CHANNELS})"
    )


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse bf16 training on a CPU that would emulate it: there it is several times slower than
    fp32 (docs/PERFORMANCE.md), so it can only cost time; a GPU or an avx512_bf16/AMX CPU is fine.
    TF32 is a CUDA tensor-core format: refused on a CPU."""
    if precision == "tf32" and device.type != "cuda":
        raise UserError('train.precision = "tf32" is a CUDA setting (TF32 tensor cores); on a CPU set "fp32" or "bf16"')
    if precision == "bf16" and device.type == "cpu" and not native_bf16():
        raise UserError(
            f'train.precision = "bf16" on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}, '
            f"no avx512_bf16/AMX in use): bf16 would be emulated and several times slower than fp32; "
            f'set train.precision = "fp32"'
        )


#: what a deterministic run on CUDA cannot make deterministic, said when a user asks for it
CUDA_NONDETERMINISM = (
    "ops without a deterministic CUDA kernel (e.g. adaptive_avg_pool2d backward, index_add) "
    "still run nondeterministically and warn once; bit-exact repeats also need the same GPU model, "
    "driver, CUDA and torch build"
)


def configure_kernels(device: torch.device, deterministic: bool | str, precision: str) -> list[str]:
    """Set torch's global kernel choices for training on ``device``; returns notes for the log.

    ``deterministic`` is ``train.deterministic``: ``"auto"`` (the default) is deterministic on a
    CPU, where it costs next to nothing and makes runs bit-reproducible, and fast on CUDA (cuDNN
    autotuning on). ``True`` on CUDA sets what determinism needs (``CUBLAS_WORKSPACE_CONFIG``,
    deterministic cuDNN algorithms, no autotuning, torch's deterministic mode, which also fills new
    tensors with NaN) and says what stays nondeterministic. ``precision`` decides TF32 on CUDA
    (``tf32`` on, ``fp32`` and ``bf16`` off)."""
    cuda = device.type == "cuda"
    exact = deterministic is True or (deterministic == "auto" and not cuda)
    notes = []
    if exact and cuda:
        # read when cuBLAS creates its handle: set before the first CUDA matmul of the process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        notes.append(
            "train.deterministic = true on CUDA: cuDNN autotuning off, deterministic algorithms, "
            f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}; {CUDA_NONDETERMINISM}"
        )
    torch.use_deterministic_algorithms(exact, warn_only=True)
    torch.backends.cudnn.deterministic = exact
    torch.backends.cudnn.benchmark = cuda and not exact
    if cuda:
        from .precision import set_tf32

        set_tf32(precision == "tf32")
    return notes


def describe_device(device: torch.device) -> str:
    """One line naming the device a run uses (logged at start: a silent CPU fallback is a trap)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    info = cpu_info()
    return f"cpu ({info['cpu']}, {info['capability']}, {info['threads']} threads)"


def compile_network(net: nn.Module, backend: str = "inductor") -> nn.Module:
    """``net.compile(backend=...)`` in place: every later call ``net(...)`` runs compiled code,
    whoever makes it (a DistributedDataParallel wrapper, the attacks, validation), and the module
    keeps its attributes and state_dict keys (``torch.compile(net)`` would return a wrapper that
    only its own callers use)."""
    if not hasattr(net, "compile"):
        raise UserError(f"train.compile needs torch >= 2.2 (nn.Module.compile); this is torch {torch.__version__}")
    net.compile(backend=backend)
    return net
