"""utils/launch.py: N processes started through torchrun's agent, reported like one process: the root cause
once, last, with its exit code; signals forwarded and waited for; no tracebacks from the launcher."""
import os
import signal
import sys

from cli_runs import Running

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launcher(script, nproc=2, args=()):
    code = f"import sys; from utils.launch import launch; sys.exit(launch({str(script)!r}, {list(args)!r}, {nproc}))"
    return Running([sys.executable, "-c", code], PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")


def test_root_cause_is_printed_once_last_with_its_code(tmp_path):
    """Rank 1 fails first with a user error; rank 0 then fails as a consequence (a lost peer).
    Only rank 1's line is printed, as the last line, and its code (2) is the job's."""
    script = tmp_path / "child.py"
    script.write_text(
        "import os, sys, time\n"
        "from utils.launch import report\n"
        "rank = int(os.environ['RANK'])\n"
        "if rank == 1:\n"
        "    report('data path /nowhere does not exist', 2)\n"
        "    sys.exit(2)\n"
        "while not os.path.exists(os.path.join(os.environ['FLATTEN_LAUNCH_RECORDS'], 'rank1.error.json')):\n"
        "    time.sleep(0.01)   # wait for rank 1's report (an ordering, not a timing window)\n"
        "report('lost contact with another process', 1, kind='peer')\n"
        "sys.exit(1)\n")
    r = _launcher(script).finish(120)
    out, err = r.stdout, r.stderr
    assert r.returncode == 2, err
    assert err.strip().splitlines()[-1] == "error: data path /nowhere does not exist"
    assert err.count("error:") == 1 and "Traceback" not in err + out and "ChildFailedError" not in err


def test_a_crash_without_report_names_the_process(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("import os\nif os.environ['RANK'] == '1':\n    raise RuntimeError('a bug')\n")
    r = _launcher(script).finish(120)
    out, err = r.stdout, r.stderr
    assert r.returncode == 1
    assert err.count("Traceback") == 1 and "RuntimeError: a bug" in err          # the child's own traceback
    assert err.strip().splitlines()[-1] == "error: process rank 1 exited with code 1 (its output is above)"


def test_signal_to_the_launcher_is_forwarded_and_waited_for(tmp_path):
    """SIGTERM to the launcher alone: every process gets it, reports, exits 143; the launcher prints the
    stop line and exits 143 without a traceback."""
    script = tmp_path / "wait.py"
    script.write_text(
        "import os, signal, sys\n"
        "from utils.launch import report\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # held from here until sigwait takes it\n"
        "print('ready', os.environ['RANK'], flush=True)\n"
        "signal.sigwait({signal.SIGTERM})\n"
        "report(f'stopped by SIGTERM in rank {os.environ[\"RANK\"]}: saved', 143, kind='stopped')\n"
        "sys.exit(143)\n")
    p = _launcher(script)
    ready = {p.wait_for(r"^ready ", 120).split()[1] for _ in range(2)}
    assert ready == {"0", "1"}
    p.proc.send_signal(signal.SIGTERM)
    r = p.finish(120)
    assert r.returncode == 143, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "stopped by SIGTERM in rank 0: saved"
    assert "Traceback" not in r.stderr and "error:" not in r.stderr


def test_a_stall_in_a_collective_is_not_taken_for_the_cause(capsys):
    """Rank 1 entered the all-reduce a moment before rank 0 began to wait for its loader (rank 0 was
    still logging the previous step): the loader's stall is the cause, though it began later."""
    from utils.launch import _summarize
    collective = dict(time=100.000, rank=1, code=3, kind="stuck", waits_for_peers=True,
                      line="no progress for 3 s while training step 3 of epoch 0 (...)")
    loader = dict(time=100.004, rank=0, code=3, kind="stuck", waits_for_peers=False,
                  line="no progress for 3 s while waiting for batch 3 of epoch 0 from the training data loader")
    assert _summarize([collective, loader], None, None, 0) == 3
    assert capsys.readouterr().err == f"error: {loader['line']}\n"
    # Only collectives stalled (a peer that died without a report): the earliest of them.
    later = dict(collective, rank=0, time=100.5, line="no progress for 3 s while summing the evaluation")
    assert _summarize([later, collective], None, None, 0) == 3
    assert capsys.readouterr().err == f"error: {collective['line']}\n"
