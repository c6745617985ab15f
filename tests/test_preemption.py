"""utils/preemption.py: the stop request, workers that ignore stop signals, the agreement after a step.
(A whole preempted run, signal to the process group and bit-exact resume, is in tests/test_main.py.)"""
import os
import signal
import subprocess
import sys

import pytest

from utils.preemption import StopRequest, agree, exit_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_request_records_the_first_signal_and_restores_handlers(sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopRequest() as stop:
        assert stop.signum == 0
        os.kill(os.getpid(), sig)          # delivered to the main thread at the next bytecode
        os.kill(os.getpid(), signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT)
        assert stop.signum == sig           # the first one counts; no exception, no exit
    assert {s: signal.getsignal(s) for s in before} == before
    assert exit_code(sig) == 128 + sig


def test_agree_in_one_process():
    stop = StopRequest()
    assert agree(stop, 3, world_size=1) == (0, 3)
    stop.signum = int(signal.SIGINT)
    assert agree(stop, 0, world_size=1) == (signal.SIGINT, 0)
    assert agree(None, 1, world_size=1) == (0, 1)


def test_children_started_in_the_block_ignore_stop_signals_from_birth():
    """A process exec'd inside ``children_ignore_stop_signals`` ignores SIGTERM/SIGINT before running a line;
    the parent's own handler is back afterwards, and a signal sent meanwhile is not lost."""
    code = ("import os, signal, subprocess, sys\n"
            "from utils.preemption import StopRequest, children_ignore_stop_signals\n"
            "with StopRequest() as stop:\n"
            "    with children_ignore_stop_signals():\n"
            "        child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],\n"
            "                                 stdin=subprocess.PIPE)\n"
            "        os.kill(os.getpid(), signal.SIGTERM)   # arrives while ignored+blocked: kept pending\n"
            "    os.kill(child.pid, signal.SIGTERM); os.kill(child.pid, signal.SIGINT)\n"
            "    alive = child.poll() is None\n"
            "    child.stdin.close(); child.wait()\n"
            "    print(alive, child.returncode, stop.signum)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "0", str(int(signal.SIGTERM))]
