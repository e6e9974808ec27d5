"""How much of a step torch.compile captures with synchronised BatchNorm (why ancra refuses
``train.sync_bn`` together with ``train.compile``).

Two gloo processes on the CPU; the network is the Fashion-MNIST study's narrow ResNet with RA
after ``ancra.distributed.convert_sync_batchnorm`` (on a CPU: ancra's all-reduce BatchNorm; on CUDA
torch's SyncBatchNorm, which needs a GPU). ``torch._dynamo.explain`` on one train-mode forward
reports the graphs and graph breaks, against the same network with plain BatchNorm.

    OMP_NUM_THREADS=1 python benchmarks/sync_bn_compile.py
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ancra.distributed import convert_sync_batchnorm
from ancra.models import create_model


def explain(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for synced in (False, True):
        torch.manual_seed(0)
        net = create_model("narrow_resnet", 10, 1, ra_blocks=2, width=8)
        if synced:
            net = convert_sync_batchnorm(net, torch.device("cpu"))
        net.train()
        x, y = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
        torch._dynamo.reset()
        e = torch._dynamo.explain(net)(x, y, with_aux=True)
        reasons = sorted({str(b.reason).splitlines()[0][:100] for b in e.break_reasons})
        results["all-reduce BatchNorm" if synced else "plain BatchNorm"] = (e.graph_count, e.graph_break_count, reasons)
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=explain, args=(r, 2, 29577, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = queue.get(timeout=600)
    for p in procs:
        p.join()
    n_bn = sum(
        isinstance(m, torch.nn.BatchNorm2d)
        for m in create_model("narrow_resnet", 10, 1, ra_blocks=2, width=8).modules()
    )
    print(f"torch {torch.__version__}; narrow ResNet with RA, {n_bn} BatchNorm layers, one train-mode forward")
    for name, (graphs, breaks, reasons) in results.items():
        print(f"{name}: {graphs} graphs, {breaks} graph breaks")
        for r in reasons:
            print(f"    {r}")
