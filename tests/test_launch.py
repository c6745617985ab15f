"""utils/launch.py: N processes started through torchrun's agent, reported like one process: the root cause
once, last, with its exit code; signals forwarded and waited for; no tracebacks from the launcher."""
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launcher(script, nproc=2, args=()):
    code = f"import sys; from utils.launch import launch; sys.exit(launch({str(script)!r}, {list(args)!r}, {nproc}))"
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


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
    p = _launcher(script)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert err.strip().splitlines()[-1] == "error: data path /nowhere does not exist"
    assert err.count("error:") == 1 and "Traceback" not in err + out and "ChildFailedError" not in err


def test_a_crash_without_report_names_the_process(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("import os\nif os.environ['RANK'] == '1':\n    raise RuntimeError('a bug')\n")
    p = _launcher(script)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert err.count("Traceback") == 1 and "RuntimeError: a bug" in err          # the child's own traceback
    assert err.strip().splitlines()[-1] == "error: process rank 1 exited with code 1 (its output is above)"


def test_signal_to_the_launcher_is_forwarded_and_waited_for(tmp_path):
    """SIGTERM to the launcher alone: every process gets it, reports, exits 143; the launcher prints the
    stop line and exits 143 without a traceback."""
    script = tmp_path / "wait.py"
    script.write_text(
        "import os, signal, sys\n"
        "from utils.launch import report\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda s, f: got.append(s))\n"
        "print('ready', os.environ['RANK'], flush=True)\n"
        "while not got:\n"
        "    signal.pause()\n"
        "report(f'stopped by SIGTERM in rank {os.environ[\"RANK\"]}: saved', 143, kind='stopped')\n"
        "sys.exit(143)\n")
    p = _launcher(script)
    ready = set()
    while len(ready) < 2:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        if line.startswith("ready"):
            ready.add(line.split()[1])
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert out.strip().splitlines()[-1] == "stopped by SIGTERM in rank 0: saved"
    assert "Traceback" not in err and "error:" not in err
