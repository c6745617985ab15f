"""main.py under a real Slurm: the one-node cluster of scripts/slurm/local_cluster.sh (slurmctld, slurmd and
munged on this machine, CPUs only).

What a task of ``srun`` and a batch script see (utils/cluster.py), ``srun -n 2 python main.py`` as one job of
two processes, a plain ``python main.py`` in a batch script staying one process, examples/slurm/train.sbatch,
and SIGTERM from Slurm (``scancel --signal=TERM``, the time-limit warning, ``scancel``): checkpoint, requeue,
resume. The tests only ever talk to the local cluster (its own ``SLURM_CONF``). Skipped when Slurm is not
installed (the script installs it: ``scripts/slurm/local_cluster.sh start``), or when the cluster is down and
cannot be started here (that needs root); a cluster the tests started is stopped at the end."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from cli_runs import ROOT, TINY_YAML, Running, read_json, read_jsonl, write_image_folder
from utils.checkpoint import safe_load
from utils.cluster import slurm_port

SLURM_DIR = os.environ.get("FLATTEN_SLURM_DIR", "/tmp/flatten-slurm")
CLUSTER_SCRIPT = os.path.join(ROOT, "scripts", "slurm", "local_cluster.sh")
EXAMPLE = os.path.join(ROOT, "examples", "slurm", "train.sbatch")
JOB_NAME = "flatten-test"
BINARIES = ("srun", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "slurmctld", "slurmd", "munged")
# a job that is over, for scontrol (finished jobs stay listed for the cluster's MinJobAge, 10 minutes)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}
# the example script on the local cluster's CPUs: 2 tasks of one CPU, no GPU
CPU_TASKS = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


class LocalSlurm:
    """The local cluster's commands (always with its own SLURM_CONF) and what a test needs of them."""

    def __init__(self, conf):
        self.conf = conf
        self.node = self.run("sinfo", "-h", "-o", "%N").stdout.strip()

    def run(self, *cmd, timeout=60, check=True):
        r = subprocess.run(cmd, env=dict(os.environ, SLURM_CONF=self.conf), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def start(self, cmd, **env):
        return Running(cmd, SLURM_CONF=self.conf, **env)

    def submit(self, *args, **env):
        """``sbatch --parsable args``: the job id."""
        r = self.start(["sbatch", "--parsable", "-J", JOB_NAME] + list(args), **env).finish(60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split(";")[0]

    def job(self, job_id):
        """``scontrol show job``: {field: value}."""
        line = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait_ended(self, job_id, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info["JobState"] in ENDED and self.run("squeue", "-h", "-j", job_id, check=False).stdout.strip() == "":
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {self.job(job_id)['JobState']} after {timeout} s")

    def cancel_test_jobs(self):
        self.run("scancel", "-n", JOB_NAME, check=False)


def _cluster_status():
    return subprocess.run([CLUSTER_SCRIPT, "status"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, FLATTEN_SLURM_DIR=SLURM_DIR))


@pytest.fixture(scope="module")
def slurm():
    """The local cluster, started here if it is installed but down (and stopped again afterwards)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): `scripts/slurm/local_cluster.sh start` "
                    f"installs and starts a local cluster")
    started = False
    if _cluster_status().returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("the local Slurm cluster is down, and starting it (scripts/slurm/local_cluster.sh start) "
                        "needs root")
        r = subprocess.run([CLUSTER_SCRIPT, "start"], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, FLATTEN_SLURM_DIR=SLURM_DIR))
        if r.returncode != 0:
            pytest.skip(f"the local Slurm cluster did not start: {(r.stdout + r.stderr).strip()[-500:]}")
        started = True
    cluster = LocalSlurm(os.path.join(SLURM_DIR, "slurm.conf"))
    cluster.cancel_test_jobs()
    yield cluster
    cluster.cancel_test_jobs()
    if started:
        subprocess.run([CLUSTER_SCRIPT, "stop"], capture_output=True, timeout=120,
                       env=dict(os.environ, FLATTEN_SLURM_DIR=SLURM_DIR))


@pytest.fixture
def cluster(slurm):
    """The cluster for one test; its jobs are cancelled at the end, whatever happened."""
    yield slurm
    slurm.cancel_test_jobs()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config file, ImageFolder) of the tiny model: 6 steps per epoch with 2 processes."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    return str(cfg), write_image_folder(root / "data")


def wait_for_line(path, pattern, timeout=300):
    """Wait until the file ``path`` (a job's output) has a line matching ``pattern``; return the line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                for line in f:
                    if re.search(pattern, line):
                        return line
        time.sleep(0.2)
    text = open(path, errors="replace").read()[-3000:] if os.path.exists(path) else "(no file)"
    raise AssertionError(f"no line matching {pattern!r} in {path} within {timeout} s\n{text}")


def run_folder_of_one_run(out):
    """The only run folder under ``--output out`` (NAME/TAG = tiny/default)."""
    assert os.listdir(out) == ["tiny"] and os.listdir(os.path.join(out, "tiny")) == ["default"], os.listdir(out)
    return os.path.join(out, "tiny", "default")


PROBE = ("import dataclasses, json, os; from utils.cluster import world_from_env; "
         "print(json.dumps(dict(dataclasses.asdict(world_from_env()), job=os.environ['SLURM_JOB_ID'], "
         "step_tasks=os.environ.get('SLURM_STEP_NUM_TASKS'))), flush=True)")


def test_what_a_task_of_srun_and_a_batch_script_see(cluster, tmp_path):
    """The variables utils/cluster.py relies on, from a real Slurm: every task of an srun step knows the step's
    size and its place; the batch script of a 2-task job has no step variables and is one process."""
    r = cluster.start(["srun", "-n", "2", "-J", JOB_NAME, "--time=5", sys.executable, "-c", PROBE]).finish(300)
    assert r.returncode == 0, r.stderr
    worlds = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(w["rank"] for w in worlds) == [0, 1]
    for w in worlds:
        assert w["step_tasks"] == "2" and w["source"] == "slurm" and w["world_size"] == 2
        assert w["local_rank"] == w["rank"] and w["local_world_size"] == 2
        assert w["master_addr"] == cluster.node and w["node"] == cluster.node
        assert w["master_port"] == slurm_port(int(w["job"]))

    out = tmp_path / "batch.out"
    r = cluster.start(["sbatch", "--wait", "-n", "2", "-J", JOB_NAME, "--time=5", f"--output={out}",
                       f"--wrap={sys.executable} -c \"{PROBE}\""]).finish(300)
    assert r.returncode == 0, r.stderr + out.read_text()
    (w,) = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    assert w["step_tasks"] is None and (w["source"], w["world_size"]) == ("single", 1)
    assert f"Slurm job {w['job']} holds 2 tasks" in w["note"]


def test_srun_two_tasks_train_as_one_job(cluster, tiny, tmp_path):
    """`srun -n 2 python main.py`: two processes from SLURM_* alone, one run folder, one set of checkpoints,
    the records written once (by rank 0), the console summary printed once."""
    cfg, data = tiny
    out = tmp_path / "out"
    r = cluster.start(["srun", "-n", "2", "-J", JOB_NAME, "--time=10", sys.executable, "main.py", "--cfg", cfg,
                       "--data-path", data, "--output", str(out)]).finish(600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    folder = run_folder_of_one_run(out)
    run = read_json(os.path.join(folder, "run.json"))
    assert (run["world_size"], run["global_batch"], run["steps_per_epoch"]) == (2, 8, 6)
    assert sorted(os.listdir(folder)) == ["best.pth", "best_ema.pth", "ckpt_epoch_0.pth", "ckpt_epoch_1.pth",
                                          "config.yaml", "eval.json", "last.pth", "log.jsonl", "log_rank0.txt",
                                          "log_rank1.txt", "run.json", "tensorboard"]
    assert len(os.listdir(os.path.join(folder, "tensorboard"))) == 1
    assert [rec["epoch"] for rec in read_jsonl(os.path.join(folder, "log.jsonl"))] == [0, 1]
    assert r.stdout.count("training tiny (") == 1 and "4 x 2 process(es)" in r.stdout
    assert "done: best Acc@1" in r.stdout


@pytest.mark.slow
def test_plain_python_in_a_batch_script_of_two_tasks_is_one_process(cluster, tiny, tmp_path):
    cfg, data = tiny
    out, log = tmp_path / "out", tmp_path / "job.out"
    r = cluster.start(["sbatch", "--wait", "-n", "2", "-J", JOB_NAME, "--time=10", f"--output={log}",
                       f"--wrap={sys.executable} main.py --cfg {cfg} --data-path {data} --output {out}"]).finish(600)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert re.search(r"WARNING Slurm job \d+ holds 2 tasks, but this process was not started by srun", text)
    folder = run_folder_of_one_run(out)
    assert read_json(os.path.join(folder, "run.json"))["world_size"] == 1
    assert not os.path.exists(os.path.join(folder, "log_rank1.txt"))


@pytest.mark.slow
def test_the_example_batch_script_trains(cluster, tiny, tmp_path):
    cfg, data = tiny
    out, log = tmp_path / "out", tmp_path / "job.out"
    r = cluster.start(["sbatch", "--wait", "-J", JOB_NAME, *CPU_TASKS, f"--output={log}", EXAMPLE, "--cfg", cfg,
                       "--data-path", data, "--output", str(out)], PYTHON=sys.executable).finish(600)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert re.search(rf"train.sbatch: job \d+ \(restart 0\) on {cluster.node}, 2 task\(s\)", text)
    assert "train.sbatch: main.py exited with 0; job RUNNING" in text and "requeue" not in text
    folder = run_folder_of_one_run(out)
    assert read_json(os.path.join(folder, "run.json"))["world_size"] == 2
    assert [rec["epoch"] for rec in read_jsonl(os.path.join(folder, "log.jsonl"))] == [0, 1]


def stop_and_resume_lines(text):
    """[(epoch, step)] of each 'SIGTERM: saved' line and of each 'resumed from ... last.pth at' line."""
    saved = [tuple(map(int, m)) for m in re.findall(r"SIGTERM: saved \S+last\.pth at epoch (\d+) step (\d+)/", text)]
    resumed = [tuple(map(int, m)) for m in re.findall(r"resumed from \S+last\.pth at epoch (\d+) step (\d+)", text)]
    return saved, resumed


@pytest.mark.slow
def test_scancel_signal_term_saves_requeues_and_the_rerun_resumes(cluster, tiny, tmp_path):
    """`scancel --signal=TERM` (what `--signal=TERM@120` does before the time limit): both ranks stop at one
    step, last.pth is saved, srun returns 143, the script requeues the job, and the rerun resumes there."""
    cfg, data = tiny
    out, log = tmp_path / "out", tmp_path / "job.out"
    job = cluster.submit(*CPU_TASKS, f"--output={log}", EXAMPLE, "--cfg", cfg, "--data-path", data,
                         "--output", str(out), "--epochs", "20", PYTHON=sys.executable)
    wait_for_line(log, r"Train: \[2/20\]")
    cluster.run("scancel", "--signal=TERM", job)
    wait_for_line(log, r"train.sbatch: main.py exited with 0", timeout=600)
    info = cluster.wait_ended(job)
    text = log.read_text()
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0"), text[-3000:]
    assert "train.sbatch: main.py exited with 143; job RUNNING" in text
    assert f"train.sbatch: requeued job {job}" in text and "(restart 1)" in text
    saved, resumed = stop_and_resume_lines(text)
    assert len(saved) == 1 and saved == resumed, text[-3000:]
    assert saved[0][0] >= 2
    records = read_jsonl(os.path.join(run_folder_of_one_run(out), "log.jsonl"))
    assert [rec["epoch"] for rec in records] == list(range(20))


@pytest.mark.slow
def test_scancel_saves_and_the_job_stays_cancelled(cluster, tiny, tmp_path):
    """A plain `scancel`: the ranks still save before they exit (143), but the job is not requeued."""
    cfg, data = tiny
    out, log = tmp_path / "out", tmp_path / "job.out"
    job = cluster.submit(*CPU_TASKS, f"--output={log}", EXAMPLE, "--cfg", cfg, "--data-path", data,
                         "--output", str(out), "--epochs", "20", PYTHON=sys.executable)
    wait_for_line(log, r"Train: \[2/20\]")
    cluster.run("scancel", job)
    info = cluster.wait_ended(job)
    line = wait_for_line(log, r"train.sbatch: main.py exited with")
    text = log.read_text()
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), text[-3000:]
    assert "main.py exited with 143; job COMPLETING" in line and "requeued" not in text
    saved, _ = stop_and_resume_lines(text)
    assert len(saved) == 1
    ckpt = safe_load(os.path.join(run_folder_of_one_run(out), "last.pth"))
    assert ckpt["mid_epoch"] == {"epoch": saved[0][0], "step": saved[0][1]}


@pytest.mark.slow
def test_the_time_limit_warning_requeues_and_the_rerun_resumes(cluster, tiny, tmp_path):
    """The script's own `--signal=TERM@120`, sent by Slurm before the time limit: once the training runs, the
    job's limit is cut to 1-2 minutes from now, so the warning comes at Slurm's next time check (within 30 s);
    the ranks save, the script requeues, the limit goes back to 10 minutes, and the rerun resumes."""
    cfg, data = tiny
    out, log = tmp_path / "out", tmp_path / "job.out"
    job = cluster.submit(*CPU_TASKS, "--time=10", f"--output={log}", EXAMPLE, "--cfg", cfg, "--data-path", data,
                         "--output", str(out), "--epochs", "100", PYTHON=sys.executable)
    wait_for_line(log, r"Train: \[2/100\]")
    h, m, sec = map(int, cluster.job(job)["RunTime"].split("-")[-1].split(":"))
    elapsed = 3600 * h + 60 * m + sec
    cluster.run("scontrol", "update", f"JobId={job}", f"TimeLimit={elapsed // 60 + 2}")   # 61-120 s left
    wait_for_line(log, rf"train.sbatch: requeued job {job}", timeout=300)
    cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    wait_for_line(log, r"train.sbatch: main.py exited with 0", timeout=600)
    info = cluster.wait_ended(job)
    text = log.read_text()
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), text[-3000:]
    assert "train.sbatch: main.py exited with 143; job RUNNING" in text
    saved, resumed = stop_and_resume_lines(text)
    assert len(saved) == 1 and saved == resumed, text[-3000:]
    records = read_jsonl(os.path.join(run_folder_of_one_run(out), "log.jsonl"))
    assert [rec["epoch"] for rec in records] == list(range(100))


def test_the_example_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", EXAMPLE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    directives = re.findall(r"^#SBATCH (\S+)", open(EXAMPLE).read(), flags=re.M)
    assert "--signal=TERM@120" in directives and "--requeue" in directives
