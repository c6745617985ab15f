"""utils/cpu_memory.py: with the tuning, glibc serves large blocks from its heap and keeps them when freed.

Read from glibc's own bookkeeping (``mallinfo2``), not from the operating
system's page counters: ``hblkhd`` is the memory in blocks served by ``mmap``,
``fordblks`` the free memory the heap keeps for reuse.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = textwrap.dedent("""
    import ctypes, json, torch
    from utils.cpu_memory import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    state = keep_freed_memory()
    t = torch.empty(16 * 2 ** 20)          # 64 MiB
    t.fill_(1.0)
    live = libc.mallinfo2()
    del t
    freed = libc.mallinfo2()
    print(json.dumps(dict(state=state, mmapped_live=live.hblkhd, mmapped_freed=freed.hblkhd,
                          heap_free_after=freed.fordblks)))
""")
MIB64 = 64 * 2 ** 20


def probe(env_value=None):
    import json
    env = dict(os.environ)
    env.pop("FLATTEN_CPU_MALLOC", None)
    if env_value is not None:
        env["FLATTEN_CPU_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")


@glibc_only
def test_tuned_malloc_keeps_large_blocks_on_the_heap():
    r = probe()
    assert r["state"] == "tuned"
    assert r["mmapped_live"] < MIB64              # the 64 MiB block did not come from mmap ...
    assert r["heap_free_after"] >= MIB64          # ... and stays in the heap, free for the next step


@glibc_only
def test_opt_out_keeps_glibc_defaults():
    r = probe("default")
    assert r["state"].startswith("default")
    assert r["mmapped_live"] >= MIB64             # glibc's default: large blocks are mmapped ...
    assert r["mmapped_freed"] < MIB64             # ... and unmapped when freed
