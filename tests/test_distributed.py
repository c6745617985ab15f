"""utils/distributed.py: the helpers without a process group, and with two gloo processes started by the
launcher (the port is picked by the rendezvous, never bound and released by the test)."""
import json
import os
import subprocess
import sys

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
