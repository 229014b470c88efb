"""How many CPU threads a run uses: torch's default (one per core) collapses on a shared machine.

On this project's 2-core machine with other jobs running (load average about 4), one MNIST EP step of the main
job's MLP took 25–31 ms with one torch thread and 191–578 ms with two: the threads wait on each other whenever the
scheduler takes a core away. :func:`configure_threads` therefore leaves the cores other processes are using.
"""

from __future__ import annotations

import os

import torch


def default_num_threads() -> int:
    """The cores not busy with other work right now (1-minute load average), at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``num_threads`` (or :func:`default_num_threads`, unless ``OMP_NUM_THREADS``
    says otherwise) and return the count used."""
    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS")
        num_threads = int(env) if env and env.isdigit() and int(env) > 0 else default_num_threads()
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    return num_threads
