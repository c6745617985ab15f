"""utils/cpu_memory.py: with the tuning, a large tensor freed and allocated again reuses its pages."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = textwrap.dedent("""
    import resource, torch
    from utils.cpu_memory import keep_freed_memory
    state = keep_freed_memory()
    def cycle():
        t = torch.empty(16 * 2 ** 20)      # 64 MiB
        t.fill_(1.0)                       # touch every page
        del t
    for _ in range(12):                    # glibc settles its heap layout within a few cycles
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        cycle()
    print(state, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def probe(env_value=None):
    env = dict(os.environ)
    env.pop("FLATTEN_CPU_MALLOC", None)
    if env_value is not None:
        env["FLATTEN_CPU_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    state, faults = out.stdout.split()[0], int(out.stdout.split()[-1])
    return state, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_malloc_reuses_freed_pages():
    state, faults = probe()
    assert state == "tuned"
    pages = 10 * 64 * 2 ** 20 // 4096
    assert faults < pages // 10, f"{faults} page faults for 10 reallocations of 64 MiB ({pages} pages)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_opt_out_keeps_glibc_defaults():
    state, faults = probe("default")
    assert state.startswith("default")
    # glibc serves 64 MiB blocks with mmap: each reallocation faults its pages in again
    assert faults > 10 * 64 * 2 ** 20 // 4096 // 2
