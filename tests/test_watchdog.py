"""utils/watchdog.py: a phase that never ends becomes one error line, exit code 3, and no orphaned workers.
The stall is injected (an event nobody sets, a child blocked on a FIFO), not timed."""
import os
import subprocess
import sys

from utils.watchdog import EXIT_STUCK, PEER_GRACE_S, Watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_stuck_phase_ends_the_process_with_one_line(tmp_path):
    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    code = ("import multiprocessing as mp, os, sys, threading\n"
            "from utils.watchdog import Watchdog\n"
            "def reader(path):\n"
            "    open(path).read()          # blocks: nobody writes\n"
            "if __name__ == '__main__':\n"
            "    child = mp.get_context('spawn').Process(target=reader, args=(sys.argv[1],))\n"
            "    child.start()\n"
            "    print(child.pid, flush=True)\n"
            "    with Watchdog(1) as wd:\n"
            "        wd.phase('waiting for batch 1 of epoch 0 from the training data loader')\n"
            "        threading.Event().wait()   # the injected stall\n")
    script = tmp_path / "stall.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script), str(fifo)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == EXIT_STUCK == 3
    assert r.stderr.strip().splitlines() == [
        "error: no progress for 1 s while waiting for batch 1 of epoch 0 from the training data loader "
        "(WATCHDOG_TIMEOUT=1); a stuck data loader, file system or process ended the run"]
    child = int(r.stdout.split()[0])
    try:                                       # killed by the watchdog (a zombie at most until reaped)
        state = open(f"/proc/{child}/status").read().split("State:")[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


def test_phases_that_end_keep_it_quiet():
    with Watchdog(0.5) as wd:
        for i in range(3):
            wd.phase(f"step {i}")
        wd.phase(None)
        assert wd.enabled and wd._thread.is_alive()
    assert wd._thread is None
    off = Watchdog(0)
    off.start()
    assert not off.enabled and off._thread is None


def test_a_wait_on_the_other_processes_gets_the_grace_and_says_so(tmp_path):
    """A phase with a collective fires only after timeout + grace (capped at the timeout): the process
    that stalled on its own reports first. The line names both bounds."""
    code = ("import threading\n"
            "from utils.watchdog import Watchdog\n"
            "with Watchdog(1) as wd:\n"
            "    assert wd.peer_grace_s == 1\n"
            "    wd.phase('summing the evaluation over the processes', waits_for_peers=True)\n"
            "    threading.Event().wait()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == EXIT_STUCK, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: no progress for 2 s while summing the evaluation over the processes (WATCHDOG_TIMEOUT=1 + 1 s "
        "for a wait on the other processes); a stuck data loader, file system or process ended the run"]
    assert Watchdog(1800).peer_grace_s == PEER_GRACE_S == 30
