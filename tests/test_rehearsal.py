"""The dress rehearsal (scripts/rehearsal.py) end to end: real photos at 224 px in real storage forms, the
full recipe under the launcher with 2 processes x 2 workers, a process-group SIGTERM mid-epoch, the resume,
an evaluation in its own folder, a no-op rerun, and a tensor-by-tensor comparison with an uninterrupted run.
Slow (about 2.5 minutes on two cores): ``pytest -m slow tests/test_rehearsal.py``, ``make test-all``."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_rehearsal(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, "-m", "scripts.rehearsal", "--output", str(tmp_path), "--compare"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    report = json.load(open(tmp_path / "rehearsal.json"))
    assert report["preempted_exit"] == 143 and report["mid_epoch"]["epoch"] == 1
    assert report["resumed_exit"] == 0 and report["noop_exit"] == 0 and report["identical"]
    assert report["final_eval"]["images"] == 36 and report["eval"]["acc1"] == report["final_eval"]["acc1"]
    assert report["replaced_lines"] >= 2 and "Traceback" not in r.stdout + r.stderr
