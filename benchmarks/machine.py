"""What every benchmark records about the machine it ran on, so numbers can be compared.

Benchmarks run as scripts (``python benchmarks/<name>.py``), so this sits beside them and is
imported as ``machine``. The load average matters on shared machines: other busy processes
skew CPU timings badly, so a JSON whose load is high should not be trusted.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import peft
import torch
import transformers


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """Versions, threads, CPU, GPU and the 1-minute load average at the time of the call."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cuda": torch.cuda.is_available(),
        "load_average_1m": load_average(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
