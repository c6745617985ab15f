"""run_with_submitit.py: main.py as submitit tasks, one training process per task.

submitit's local executor runs a job on this machine the way Slurm would: a controller process starts one
process per task, forwards the time-limit signal (SIGTERM here) to them, and starts them again when rank 0
requeues. The slow tests stop a job with SIGTERM (saved, requeued, resumed), locally and through the local
Slurm cluster of tests/test_slurm.py."""
import os
import pickle
import re
import signal
import sys

import pytest

import run_with_submitit as rws
from cli_runs import Running, read_json, read_jsonl
from test_slurm import JOB_NAME, cluster, slurm, stop_and_resume_lines, tiny, wait_for_line  # noqa: F401 (fixtures)


def _submit(tiny, tmp_path, *options, epochs=2, **env):
    cfg, data = tiny
    cmd = [sys.executable, "run_with_submitit.py", "--gpus-per-node", "0", "--tasks-per-node", "2", "--wait",
           "--name", JOB_NAME, "--job-dir", str(tmp_path / "jobs"), *options,
           "--cfg", cfg, "--data-path", data, "--output", str(tmp_path / "out"), "--epochs", str(epochs)]
    p = Running(cmd, **env)
    job = re.search(r"^submitted job (\d+) ", p.wait_for(r"^submitted job ", 300)).group(1)
    return p, job, tmp_path / "jobs" / job


def _records(tmp_path):
    folder = tmp_path / "out" / "tiny" / "default"
    assert os.listdir(tmp_path / "out") == ["tiny"] and os.listdir(tmp_path / "out" / "tiny") == ["default"]
    return read_json(folder / "run.json"), [rec["epoch"] for rec in read_jsonl(folder / "log.jsonl")]


def test_two_local_tasks_train_to_the_end(tiny, tmp_path):
    p, job, folder = _submit(tiny, tmp_path, "--local")
    r = p.finish(600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"submitted job {job} locally: 1 node(s) x 2 task(s)" in r.stdout and f"job {job} finished" in r.stdout
    run, epochs = _records(tmp_path)
    assert (run["world_size"], run["global_batch"], epochs) == (2, 8, [0, 1])
    assert run["command"].startswith(os.path.join(rws.ROOT, "main.py") + " --cfg ")
    assert sorted(n for n in os.listdir(tmp_path / "out" / "tiny" / "default") if n.startswith("log_rank")) == \
        ["log_rank0.txt", "log_rank1.txt"]
    for task in (0, 1):   # each task ran main.py to the end and returned its exit code to submitit
        with open(folder / f"{job}_{task}_result.pkl", "rb") as f:
            assert pickle.load(f) == ("success", 0)
    assert "done: best Acc@1" in (folder / f"{job}_0_log.out").read_text()


def test_submitit_options_and_main_arguments_are_told_apart():
    args, rest = rws.parse_args(["--local", "--gpus-per-node", "0", "--cfg", "a.yaml", "--epochs", "3",
                                 "--timeout", "60", "--opts", "TRAIN.WARMUP_EPOCHS", "1"])
    assert (args.local, args.tasks_per_node, args.timeout) == (True, 1, 60)
    assert rest == ["--cfg", "a.yaml", "--epochs", "3", "--opts", "TRAIN.WARMUP_EPOCHS", "1"]
    assert rws.parse_args(["--gpus-per-node", "4"])[0].tasks_per_node == 4
    for wrong in (["--gpus-per-node", "2", "--tasks-per-node", "3"], ["--nproc-per-node", "2"],
                  ["--local", "--nodes", "2"], ["--cfgg", "a.yaml"]):
        with pytest.raises(SystemExit) as e:
            rws.parse_args(wrong)
        assert e.value.code == 2, wrong


def test_checkpoint_resubmits_the_same_command():
    trainer = rws.Trainer(["--cfg", "a.yaml", "--data-path", "d"])
    again = trainer.checkpoint()
    assert isinstance(again.function, rws.Trainer) and again.function is not trainer
    assert (again.function.argv, again.function.root, again.args, again.kwargs) == (trainer.argv, rws.ROOT, (), {})


@pytest.mark.slow
def test_sigterm_to_a_local_job_saves_requeues_and_resumes(tiny, tmp_path):
    """The local controller forwards SIGTERM to the tasks (as at its time limit): they save last.pth, rank 0
    requeues through submitit (exit 144), the controller starts the tasks again and they resume there."""
    p, job, folder = _submit(tiny, tmp_path, "--local", epochs=8)
    wait_for_line(folder / f"{job}_0_log.out", r"Train: \[2/8\]")
    os.kill(int(job), signal.SIGTERM)         # the local job id is the controller's pid
    r = p.finish(900)
    log = (folder / f"{job}_0_log.out").read_text()
    assert r.returncode == 0, r.stderr[-2000:] + log[-3000:]
    assert f"Requeued job {job}" in log
    saved, resumed = stop_and_resume_lines(log)
    assert len(saved) == 1 and saved == resumed, log[-3000:]
    run, epochs = _records(tmp_path)
    assert run["world_size"] == 2 and epochs == list(range(8))


@pytest.mark.slow
def test_through_slurm_scancel_term_requeues_and_the_job_resumes(cluster, tiny, tmp_path):
    """The same job submitted to the local Slurm cluster: sbatch with --signal=TERM@<delay>, srun, one task per
    process; `scancel --signal=TERM` (the time-limit warning's delivery) -> saved, requeued by Slurm, resumed."""
    p, job, folder = _submit(tiny, tmp_path, "--timeout", "30", epochs=10, SLURM_CONF=cluster.conf)
    script = (folder / f"{job}_submission.sh").read_text()
    assert "#SBATCH --signal=TERM@120" in script and "#SBATCH --ntasks-per-node=2" in script
    wait_for_line(folder / f"{job}_0_log.out", r"Train: \[2/10\]")
    cluster.run("scancel", "--signal=TERM", job)
    r = p.finish(900)
    info = cluster.wait_ended(job)
    log = (folder / f"{job}_0_log.out").read_text()
    assert r.returncode == 0, r.stderr[-2000:] + log[-3000:]
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1")
    assert f"Requeued job {job}" in log
    saved, resumed = stop_and_resume_lines(log)
    assert len(saved) == 1 and saved == resumed, log[-3000:]
    run, epochs = _records(tmp_path)
    assert run["world_size"] == 2 and epochs == list(range(10))
