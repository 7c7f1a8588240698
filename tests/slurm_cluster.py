"""A throwaway single-node SLURM cluster for tests: munged, slurmctld and slurmd started from a temporary
folder (own config, key, sockets, ports and state), stopped at the end. Needs root and Debian's
``slurm-wlm`` and ``munge`` packages (``apt-get install -y slurm-wlm munge``); ``unavailable()`` says
why a cluster cannot start here, so a test can skip with that reason."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue")


def unavailable() -> str | None:
    """Why a cluster cannot start on this machine, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    missing = [name for name in DAEMONS if not Path(_binary(name)).exists()]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install -y slurm-wlm munge)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_conf(root: Path, host: str, cpus: int, munge_socket: Path) -> str:
    # cred_expire: how long SLURM holds a requeued job before it may start again (default 120 s).
    ctld_port, slurmd_port = _free_port(), _free_port()
    return f"""\
ClusterName=anomalyattntest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=30
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def single_node_cluster(root: Path, cpus: int = 2, start_timeout_s: float = 60.0) -> Iterator[dict[str, str]]:
    """Start the cluster under ``root``; yield the environment (``SLURM_CONF``) for clients and jobs."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # munged refuses folders that others may write
    for folder in ("state", "spool", "munge"):
        (root / folder).mkdir(exist_ok=True)
        (root / folder).chmod(0o700)
    munge_dir = root / "munge"
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = munge_dir / "munge.socket"
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, cpus, munge_socket))
    # Read by slurmd next to slurm.conf; with proctrack/linuxproc and task/none no cgroup is used.
    (root / "cgroup.conf").write_text("CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []

    def start(args: list[str], log_name: str) -> None:
        log = (root / log_name).open("ab")
        started.append(
            subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    try:
        start(
            [
                _binary("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                f"--pid-file={munge_dir}/munged.pid", f"--seed-file={munge_dir}/munged.seed",
                f"--log-file={munge_dir}/munged.log",
            ],
            "munged.out",
        )
        _wait_for(lambda: munge_socket.exists(), start_timeout_s, "munged socket", root)
        start([_binary("slurmctld"), "-D", "-i", "-f", str(conf)], "slurmctld.out")
        start([_binary("slurmd"), "-D", "-f", str(conf)], "slurmd.out")
        _wait_for(lambda: _node_idle(env), start_timeout_s, "the node to become idle", root)
        yield {"SLURM_CONF": str(conf)}
    finally:
        for process in reversed(started):  # only the daemons started here, by their own ids
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(started):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _node_idle(env: dict[str, str]) -> bool:
    result = subprocess.run(
        ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return result.returncode == 0 and result.stdout.strip() in ("idle", "mix")


def _wait_for(condition, timeout_s: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    logs = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}" for path in sorted(root.glob("*.out"))
    )
    raise RuntimeError(f"single-node SLURM cluster: timed out waiting for {what}\n{logs}")
