"""A throwaway single-node SLURM cluster (munge, slurmctld, slurmd) for the tests.

Debian's ``slurm-wlm`` and ``munge`` (``.ci/install-slurm.sh``) run without systemd or
cgroups when SLURM tracks processes itself (``proctrack/linuxproc``, ``task/none``).
Every SLURM command, ``srun`` inside jobs included, reads ``/etc/slurm/slurm.conf``, so
the cluster writes that file, marked as its own, and removes it at the end; it never
replaces a file it did not write. The daemons run in the foreground as children of the
test process and are stopped by their process ids. There is no accounting database:
jobs are followed with ``squeue`` and ``scontrol``, which keep finished jobs for an hour
(``MinJobAge``).
"""

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = SLURM_CONF.with_name("gres.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MARKER = "# Written by emsrflow's tests/slurm_cluster.py for a test cluster; removed after.\n"
PARTITION = "emsr"
BINARIES = (
    "munge",
    "unmunge",
    "munged",
    "slurmctld",
    "slurmd",
    "sinfo",
    "sbatch",
    "squeue",
    "scontrol",
    "scancel",
)


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run on this machine; the message says why."""


@dataclass
class SlurmCluster:
    """A running single-node cluster: its folder, partition, node and daemons."""

    scratch: Path
    partition: str = PARTITION
    #: Stand-in GPUs of the node (gres/gpu on /dev/null: scheduled, no device behind).
    gpus: int = 0
    #: Memory (MB) the node offers to jobs.
    memory_mb: int = 0
    processes: list = field(default_factory=list)
    wrote: list = field(default_factory=list)

    def jobs(self):
        """Every job slurmctld knows (finished ones included), as ``scontrol`` fields."""
        found = subprocess.run(
            ["scontrol", "show", "job", "--oneliner"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [
            dict(token.partition("=")[::2] for token in line.split())
            for line in found.stdout.splitlines()
            if line.startswith("JobId=")
        ]

    def stop(self, keep=0):
        """Stop the daemons this cluster started, newest first, all but the ``keep`` oldest.

        Stopping them all first cancels the jobs left and removes the files it wrote.
        """
        if not keep and self.processes:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                left = subprocess.run(
                    ["squeue", "--noheader", "--format=%i"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                ).stdout.split()
                if left:
                    subprocess.run(["scancel", *left], capture_output=True, timeout=30)
        while len(self.processes) > keep:
            process = self.processes.pop()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if keep:
            return
        for path in self.wrote:
            with contextlib.suppress(FileNotFoundError):
                if path.read_text(errors="replace").startswith(MARKER):
                    path.unlink()
        self.wrote.clear()


def start(scratch, gpus=1):
    """Start a cluster keeping its state and logs in ``scratch``.

    The node advertises ``gpus`` stand-in GPUs when SLURM accepts them (else none).

    Raises
    ------
    ClusterUnavailable
        Not root, SLURM or munge missing, a foreign slurm.conf, or daemons that fail.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting SLURM daemons needs root")
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        raise ClusterUnavailable(
            f"{', '.join(missing)} not found: run .ci/install-slurm.sh (slurm-wlm, munge)"
        )
    for path in (SLURM_CONF, GRES_CONF):
        if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
            raise ClusterUnavailable(f"{path} exists and belongs to another SLURM set-up")
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(scratch=scratch)
    try:
        _start_munge(cluster)
        with_munge = len(cluster.processes)
        try:
            _start_slurm(cluster, gpus)
        except ClusterUnavailable:
            if not gpus:
                raise
            cluster.stop(keep=with_munge)
            _start_slurm(cluster, 0)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_munge(cluster):
    """Use a running munged, or start one with the distribution's key (made if missing)."""
    if _munge_works():
        return
    try:
        user = pwd.getpwnam("munge")
    except KeyError:
        user = None
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        MUNGE_KEY.chmod(0o400)
        if user:
            os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
    folder = cluster.scratch / "munge"
    folder.mkdir(exist_ok=True)
    command = ["munged", "--foreground", f"--log-file={folder / 'munged.log'}"]
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    if user:
        for path in (folder, Path("/run/munge")):
            os.chown(path, user.pw_uid, user.pw_gid)
    else:
        command.append("--force")
    cluster.processes.append(
        subprocess.Popen(
            command,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
    )
    _wait(_munge_works, 20, "munged did not answer", [folder / "munged.log"])


def _munge_works():
    try:
        token = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=True)
        subprocess.run(["unmunge"], input=token.stdout, capture_output=True, timeout=10, check=True)
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def _start_slurm(cluster, gpus):
    folder = cluster.scratch / f"slurm-gpus{gpus}"
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    node, memory_mb = _node_line(gpus)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    cluster.wrote.append(SLURM_CONF)
    SLURM_CONF.write_text(slurm_conf(folder, node, gpus))
    if gpus:
        # gres/gpu wants a device file per GPU; /dev/null stands in for one.
        cluster.wrote.append(GRES_CONF)
        GRES_CONF.write_text(MARKER + "Name=gpu File=/dev/null\n" * gpus)
    for daemon in ("slurmctld", "slurmd"):
        cluster.processes.append(
            subprocess.Popen(
                [daemon, "-D"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=folder
            )
        )
    logs = [folder / "slurmctld.log", folder / "slurmd.log"]
    _wait(_node_idle, 60, "the SLURM node did not become idle", logs)
    cluster.gpus, cluster.memory_mb = gpus, memory_mb


def _node_line(gpus):
    """This machine's node as slurmd detects it, with a fifth of its memory kept back."""
    found = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    line = next((x for x in found.stdout.splitlines() if x.startswith("NodeName=")), None)
    if line is None:
        raise ClusterUnavailable(f"slurmd -C found no node: {found.stdout}{found.stderr}")
    memory_mb = int(int(re.search(r"RealMemory=(\d+)", line).group(1)) * 0.8)
    line = re.sub(r"RealMemory=\d+", f"RealMemory={memory_mb}", line)
    return line + (f" Gres=gpu:{gpus}" if gpus else "") + " State=UNKNOWN", memory_mb


def slurm_conf(folder, node_line, gpus=0):
    """slurm.conf of a one-node cluster keeping its state and logs in ``folder``."""
    host = re.match(r"NodeName=(\S+)", node_line).group(1)
    return MARKER + "\n".join(
        [
            "ClusterName=emsrtest",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            # No accounting database: squeue and scontrol keep finished jobs an hour.
            "MinJobAge=3600",
            "ReturnToService=2",
            f"StateSaveLocation={folder}/state",
            f"SlurmdSpoolDir={folder}/spool",
            f"SlurmctldPidFile={folder}/slurmctld.pid",
            f"SlurmdPidFile={folder}/slurmd.pid",
            f"SlurmctldLogFile={folder}/slurmctld.log",
            f"SlurmdLogFile={folder}/slurmd.log",
            *(["GresTypes=gpu"] if gpus else []),
            node_line,
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_idle():
    state = _sinfo("%t").split()
    if any(s.startswith(("drain", "inval", "fail")) for s in state):
        raise ClusterUnavailable(f"the SLURM node is {state[0]}: {_sinfo('%E', '-R')}")
    return state == ["idle"]


def _sinfo(fmt, *options):
    found = subprocess.run(
        ["sinfo", "--noheader", *options, "-o", fmt], capture_output=True, text=True, timeout=10
    )
    return found.stdout.strip() if found.returncode == 0 else ""


def _wait(predicate, timeout, what, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "".join(
        f"\n--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        for log in logs
        if log.exists()
    )
    raise ClusterUnavailable(f"{what} within {timeout} s{tails}")
