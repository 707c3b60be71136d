"""A real single-node SLURM cluster on localhost, for the tests of profiles/slurm.

Debian's slurm-wlm (22.05) and munge, started in the foreground from a folder of their
own (config, state, sockets, logs): nothing under /etc or /run is touched, and a system
slurm or munge on the same machine keeps running. Clients (sbatch, squeue) find the
cluster through ``SLURM_CONF``, which ``LocalSlurm.env`` sets. The daemons are stopped
by their process ids.

One detour: inside a job, the executor plugin's jobstep runs the rule with ``srun`` after
dropping every ``SLURM_*`` variable but the job's identity, ``SLURM_CONF`` included. A
real cluster keeps its config at the default path (or serves it, configless), so srun
finds it anyway; this one puts an ``srun`` on ``PATH`` that sets ``SLURM_CONF`` first.

The cluster is like the one the issue was tried on: no accounting storage (``sacct``
cannot answer) and no GPUs. ``.ci/run`` installs the packages where they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PROGRAMS = (
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
)
PARTITION = "cpu"


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def why_not_available() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    missing = missing_programs()
    if missing:
        return (
            f"SLURM or munge not installed (missing {', '.join(missing)}): "
            "apt-get install slurm-wlm munge (.ci/run does it as root)"
        )
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs as the submitting user"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """``with LocalSlurm(folder) as cluster:`` a running cluster; ``cluster.env`` for clients."""

    def __init__(self, folder: Path, start_timeout_s: float = 60.0):
        self.folder = Path(folder)
        self.start_timeout_s = start_timeout_s
        self.processes: dict[str, subprocess.Popen] = {}
        self.node = socket.gethostname()
        self.cpus = os.cpu_count() or 1
        self.conf = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(self.folder / "bin"), os.environ.get("PATH", "")])
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log", "bin"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        srun = self.folder / "bin" / "srun"
        srun.write_text(
            f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n'
        )
        srun.chmod(0o755)
        os.chmod(self.folder / "munge", 0o700)
        log = self.folder / "log"
        memory_mb = (
            total_memory_mb() - 1024
        )  # what a job may ask for: the node's, less 1 GB
        # Memory is not a consumable (CR_CPU): a job's --mem only has to fit the node.
        self.conf.write_text(
            f"""ClusterName=segflowtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.folder / "state"}
SlurmdSpoolDir={self.folder / "spool"}
SlurmctldPidFile={self.folder / "slurmctld.pid"}
SlurmdPidFile={self.folder / "slurmd.pid"}
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
SchedulerParameters=sched_interval=1
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb}
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )

    def start(self) -> LocalSlurm:
        self.write_config()
        munge = self.folder / "munge"
        key = munge / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        os.chmod(key, 0o600)
        self._spawn(
            "munged",
            [
                "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}", f"--log-file={munge / 'munged.log'}",
            ],
        )  # fmt: skip
        self._wait_for(self.munge_socket.exists, "munged's socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait_for(self._node_is_idle, f"node {self.node} idle in sinfo")
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env
        )

    def _node_is_idle(self) -> bool:
        shown = subprocess.run(
            ["sinfo", "--noheader", "--format=%t"],
            capture_output=True,
            text=True,
            env=self.env,
        )
        return shown.returncode == 0 and shown.stdout.strip() == "idle"

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not ready():
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"local SLURM: no {what} after {self.start_timeout_s:.0f} s"
                    f" (exited: {dead or 'none'}); logs:\n{self.logs()}"
                )
            time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted((self.folder / "log").glob("*"))
        )

    def stop(self) -> None:
        """SIGTERM each daemon this object started (by its pid), SIGKILL if it lingers."""
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
