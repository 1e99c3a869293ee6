"""When, where and how a figure was made: the stamp on every benchmark's and evaluation's JSON.

``benchmarks`` and ``make evaluate`` both stamp their results with it, and
``python -m benchmarks.tables`` prints it over every table drawn from them.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess


def machine(command: str) -> dict:
    """Date (UTC), CPU, cores, memory, GPU, the command, the commit, the versions and the
    load average when it began (other work on the machine slows what it measures)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "gpu": gpu,
            "command": command, "commit": commit, "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]}
