"""utils/distributed.py: the helpers without a process group, and with two gloo processes started by the
launcher (the port is picked by the rendezvous, never bound and released by the test)."""
import datetime
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from utils import distributed as du

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_helpers_without_group(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    rank, world, local, device = du.init_distributed(timeout_s=5)
    assert (rank, world, local) == (0, 1, 0) and not du.is_dist()
    du.barrier()
    assert du.all_reduce_sum([3, 4.5]) == [3.0, 4.5]
    assert du.all_reduce_sum(7) == 7.0
    t = du.all_reduce_sum(torch.tensor([1, 2], dtype=torch.int32))
    assert t.dtype == torch.float64 and t.tolist() == [1.0, 2.0]
    assert du.broadcast_object({"a": 1}) == {"a": 1} and du.gather_objects(5) == [5]
    du.cleanup()


def test_collectives_with_two_processes(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, os, sys\n"
        "import torch\n"
        "torch.cuda.is_available = lambda: False   # the CPU (gloo) path even on a GPU machine\n"
        "from utils import distributed as du\n"
        "rank, world, _, device = du.init_distributed(timeout_s=60)\n"
        "data = list(range(7))\n"
        "mine = set(data[rank::world])\n"
        "sums = du.all_reduce_sum([float(i in mine) for i in data] + [len(mine)])\n"
        "folder = du.broadcast_object(f'made-by-{rank}')\n"
        "gathered = du.gather_objects({'rank': rank})\n"
        "du.barrier()\n"
        "with open(os.path.join(sys.argv[1], f'rank{rank}.json'), 'w') as f:\n"
        "    json.dump(dict(rank=rank, world=world, dist=du.is_dist(), device=str(device), sums=sums,\n"
        "                   folder=folder, gathered=gathered), f)\n"
        "du.cleanup()\n")
    code = f"import sys; from utils.launch import launch; sys.exit(launch({str(script)!r}, [{str(tmp_path)!r}], 2))"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True,
                   timeout=300)
    for rank in range(2):
        res = json.load(open(tmp_path / f"rank{rank}.json"))
        assert res["rank"] == rank and res["world"] == 2 and res["dist"] and res["device"] == "cpu"
        assert res["sums"] == [1.0] * 7 + [7.0]       # each item counted once; 4 + 3 items
        assert res["folder"] == "made-by-0"
        assert res["gathered"] == [{"rank": 0}, {"rank": 1}]


# ----------------------------------------------------------------------------- which GPU each process takes
@pytest.mark.parametrize("local_rank, local_world, visible, want", [
    (0, 1, 0, "cpu"),
    (3, 8, 8, "cuda:3"),          # torchrun / srun --gpus-per-node: every process sees every GPU
    (3, 8, 1, "cuda:0"),          # srun --gpus-per-task=1: each process sees its own GPU only
    (1, 4, 2, "cuda:0"),          # two GPUs of its own per process
    (1, None, 8, "cuda:1"),       # a launcher that does not say how many processes share the node
    (5, None, 1, "cuda:0"),
])
def test_choose_device(local_rank, local_world, visible, want):
    assert str(du.choose_device(local_rank, local_world, visible)) == want


def test_choose_device_refuses_a_rank_without_a_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(du.DeviceError, match=r"^LOCAL_RANK=3 but only 2 GPUs are visible \(CUDA_VISIBLE_DEVICES="
                                             r"0,1\); start at most that many processes per node"):
        du.choose_device(3, None, 2)


def _check_in_threads(identities, nodes):
    """check_distinct_gpus in one thread per 'process', each with its own client of one TCPStore."""
    import threading

    import torch.distributed as dist
    world = len(identities)
    master = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=60))
    results = [None] * world

    def one(rank):
        store = dist.TCPStore("127.0.0.1", master.port, world, is_master=False,
                              timeout=datetime.timedelta(seconds=60))
        try:
            du.check_distinct_gpus(dist.PrefixStore("flatten", store), rank, world, nodes[rank], identities[rank])
            results[rank] = "ok"
        except du.DeviceError as e:
            results[rank] = str(e)
    threads = [threading.Thread(target=one, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return results


def test_distinct_gpus_pass():
    gpus = ["NVIDIA H200 (GPU-aaa)", "NVIDIA H200 (GPU-bbb)", "NVIDIA H200 (GPU-aaa)"]
    assert _check_in_threads(gpus, ["n0", "n0", "n1"]) == ["ok"] * 3      # the same GPU name on another node


def test_two_processes_on_one_gpu_end_every_process_in_one_line(monkeypatch):
    """Ranks 1 and 2 of node n0 would share a GPU: every rank (rank 0 too, which would otherwise wait in
    the NCCL set-up) raises the same line before any GPU communication."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    gpus = ["NVIDIA H200 (GPU-aaa)", "NVIDIA H200 (GPU-bbb)", "NVIDIA H200 (GPU-bbb)"]
    results = _check_in_threads(gpus, ["n0", "n0", "n0"])
    assert len(set(results)) == 1
    assert re.fullmatch(r"2 processes on node n0 would share one GPU, NVIDIA H200 \(GPU-bbb\) \(rank [12] sees "
                        r"CUDA_VISIBLE_DEVICES=0, \d+ GPU\(s\)\): give each process a GPU of its own \(srun "
                        r"--gpus-per-task=1\) or every process all of the node's GPUs, or start fewer processes "
                        r"per node", results[0]), results[0]
    assert _check_in_threads([None, None], ["n0", "n0"]) == ["ok", "ok"]   # the CPU: nothing to check
