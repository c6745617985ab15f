"""utils/cluster.py: the job a process belongs to, read from torchrun's or Slurm's variables.

The Slurm environments below are what a real Slurm (22.05.8, the local cluster of
scripts/slurm/local_cluster.sh on a host named ``vm``) gave a task of ``srun -n 2``, the batch script of
``sbatch -n 2`` and the shell of ``salloc -n 2`` (``env | grep ^SLURM``; tests/test_slurm.py reads the
same variables from a running Slurm)."""
import pytest

from utils.cluster import ClusterEnvError, World, expand_hostlist, export_world, slurm_port, tasks_on_node, \
    world_from_env

# `srun -n 2 ...`, task 1 (job 1, one node)
SRUN_TASK_1 = {
    "SLURMD_NODENAME": "vm", "SLURM_CLUSTER_NAME": "flatten-local", "SLURM_CONF": "/tmp/flatten-slurm/slurm.conf",
    "SLURM_CPUS_ON_NODE": "2", "SLURM_GTIDS": "0,1", "SLURM_JOBID": "1", "SLURM_JOB_CPUS_PER_NODE": "2",
    "SLURM_JOB_GID": "0", "SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "bash", "SLURM_JOB_NODELIST": "vm",
    "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_PARTITION": "local", "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root",
    "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1", "SLURM_LOCALID": "1", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
    "SLURM_NODELIST": "vm", "SLURM_NPROCS": "2", "SLURM_NTASKS": "2", "SLURM_PRIO_PROCESS": "0",
    "SLURM_PROCID": "1", "SLURM_SRUN_COMM_HOST": "127.0.0.1", "SLURM_SRUN_COMM_PORT": "45017", "SLURM_STEPID": "0",
    "SLURM_STEP_ID": "0", "SLURM_STEP_LAUNCHER_PORT": "45017", "SLURM_STEP_NODELIST": "vm",
    "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2",
    "SLURM_SUBMIT_DIR": "/tmp", "SLURM_SUBMIT_HOST": "vm", "SLURM_TASKS_PER_NODE": "2", "SLURM_TASK_PID": "5947",
    "SLURM_TOPOLOGY_ADDR": "vm", "SLURM_TOPOLOGY_ADDR_PATTERN": "node", "SLURM_UMASK": "0022",
    "SLURM_WORKING_CLUSTER": "flatten-local:127.0.0.1:6817:9728:109",
}

# the batch script of `sbatch -n 2` (job 2): SLURM_PROCID and SLURM_NTASKS, but no SLURM_STEP_* variable
SBATCH_SCRIPT = {
    "SLURMD_NODENAME": "vm", "SLURM_CLUSTER_NAME": "flatten-local", "SLURM_CONF": "/tmp/flatten-slurm/slurm.conf",
    "SLURM_CPUS_ON_NODE": "2", "SLURM_GTIDS": "0", "SLURM_JOBID": "2", "SLURM_JOB_CPUS_PER_NODE": "2",
    "SLURM_JOB_GID": "0", "SLURM_JOB_ID": "2", "SLURM_JOB_NAME": "dump.sbatch", "SLURM_JOB_NODELIST": "vm",
    "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_PARTITION": "local", "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root",
    "SLURM_LOCALID": "0", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_NODELIST": "vm",
    "SLURM_NODE_ALIASES": "(null)", "SLURM_NPROCS": "2", "SLURM_NTASKS": "2", "SLURM_PRIO_PROCESS": "0",
    "SLURM_PROCID": "0", "SLURM_SUBMIT_DIR": "/tmp/slurmprobe", "SLURM_SUBMIT_HOST": "vm",
    "SLURM_TASKS_PER_NODE": "2", "SLURM_TASK_PID": "6004", "SLURM_TOPOLOGY_ADDR": "vm",
    "SLURM_TOPOLOGY_ADDR_PATTERN": "node", "SLURM_WORKING_CLUSTER": "flatten-local:127.0.0.1:6817:9728:109",
}

# a step of that batch script: `srun -n 1 ...` inside the 2-task job (job 2, step 1)
SRUN_ONE_TASK_IN_JOB = dict(SBATCH_SCRIPT, SLURM_NTASKS="1", SLURM_NPROCS="1", SLURM_STEPID="1", SLURM_STEP_ID="1",
                            SLURM_STEP_NODELIST="vm", SLURM_STEP_NUM_NODES="1", SLURM_STEP_NUM_TASKS="1",
                            SLURM_STEP_TASKS_PER_NODE="1", SLURM_TASKS_PER_NODE="1")

# the shell of `salloc -n 2` (job 3): no task variables at all
SALLOC_SHELL = {"SLURM_JOB_ID": "3", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "vm", "SLURM_NODELIST": "vm"}


@pytest.mark.parametrize("hostlist, hosts", [
    ("vm", ["vm"]),
    ("gpu[01-03,7],login1", ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),
    ("rack[1-2]-gpu[1,3]", ["rack1-gpu1", "rack1-gpu3", "rack2-gpu1", "rack2-gpu3"]),
    ("a,b[009-010],c", ["a", "b009", "b010", "c"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["gpu[a-c]", "gpu[1-x]"])
def test_expand_hostlist_refuses_what_it_cannot_read(hostlist):
    with pytest.raises(ClusterEnvError, match="host list"):
        expand_hostlist(hostlist)


@pytest.mark.parametrize("per_node, node, tasks", [
    ("2", 0, 2), ("4(x2)", 1, 4), ("2(x3),1", 0, 2), ("2(x3),1", 2, 2), ("2(x3),1", 3, 1), ("8,4(x2)", 2, 4),
])
def test_tasks_on_node(per_node, node, tasks):
    assert tasks_on_node(per_node, node) == tasks


@pytest.mark.parametrize("per_node, node, match", [("2(x3)", 3, "node 3 is not"), ("2x3", 0, "cannot read")])
def test_tasks_on_node_errors(per_node, node, match):
    with pytest.raises(ClusterEnvError, match=match):
        tasks_on_node(per_node, node)


def test_a_task_of_srun():
    w = world_from_env(SRUN_TASK_1)
    assert w == World(rank=1, world_size=2, local_rank=1, local_world_size=2, master_addr="vm",
                      master_port=slurm_port(1), source="slurm", node="vm")
    assert 20000 <= w.master_port < 40000 and slurm_port(1) != slurm_port(2)


def test_the_batch_script_is_one_process_and_says_so():
    w = world_from_env(SBATCH_SCRIPT)
    assert (w.rank, w.world_size, w.local_world_size, w.source) == (0, 1, 1, "single")
    assert "Slurm job 2 holds 2 tasks" in w.note and "srun" in w.note


def test_an_salloc_shell_is_one_process_and_says_so():
    w = world_from_env(SALLOC_SHELL)
    assert (w.world_size, w.source) == (1, "single") and "Slurm job 3 holds 2 tasks" in w.note


def test_a_one_task_step_is_one_process_without_a_note():
    w = world_from_env(SRUN_ONE_TASK_IN_JOB)
    assert (w.world_size, w.source, w.note) == (1, "single", "")


def test_several_nodes():
    """Task 5 of `srun -N 2 --ntasks-per-node 4`: the second task of node 1; the first node is the rendezvous."""
    env = dict(SRUN_TASK_1, SLURM_JOB_ID="4242", SLURM_PROCID="5", SLURM_LOCALID="1", SLURM_NODEID="1",
               SLURMD_NODENAME="gpu02", SLURM_STEP_NUM_TASKS="8", SLURM_STEP_TASKS_PER_NODE="4(x2)",
               SLURM_STEP_NODELIST="gpu[01-02]", SLURM_JOB_NODELIST="gpu[01-02]", SLURM_STEP_NUM_NODES="2")
    assert world_from_env(env) == World(5, 8, 1, 4, "gpu01", slurm_port(4242), "slurm", "gpu02")


def test_master_address_and_port_from_the_environment_win():
    env = dict(SRUN_TASK_1, MASTER_ADDR="10.0.0.7", MASTER_PORT="29411")
    w = world_from_env(env)
    assert (w.master_addr, w.master_port, w.source) == ("10.0.0.7", 29411, "slurm")


def test_torchrun_variables_win_over_slurm():
    """`srun -n 1 torchrun --nproc-per-node 2 main.py`: the processes are torchrun's, not the step's."""
    env = dict(SRUN_ONE_TASK_IN_JOB, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    assert world_from_env(env) == World(1, 2, 1, 2, "127.0.0.1", 29500, "torchrun", "vm")


def test_a_step_without_a_node_list_needs_master_addr():
    env = {k: v for k, v in SRUN_TASK_1.items() if "NODELIST" not in k}
    with pytest.raises(ClusterEnvError, match="MASTER_ADDR"):
        world_from_env(env)
    assert world_from_env(dict(env, MASTER_ADDR="h0")).master_addr == "h0"


def test_a_variable_that_is_not_a_number_is_named():
    with pytest.raises(ClusterEnvError, match="SLURM_PROCID='x'"):
        world_from_env(dict(SRUN_TASK_1, SLURM_PROCID="x"))


def test_export_world_writes_torchrun_variables():
    env = {}
    export_world(world_from_env(SRUN_TASK_1), env)
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "vm", "MASTER_PORT": str(slurm_port(1))}
    # and what it wrote reads back as the same job
    back = world_from_env(env)
    assert (back.rank, back.world_size, back.master_addr, back.master_port) == (1, 2, "vm", slurm_port(1))
    single = {}
    export_world(world_from_env(SBATCH_SCRIPT), single)
    assert single == {}
