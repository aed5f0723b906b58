"""Where a benchmark ran: CPU model and cores, GPUs (name, compute capability, driver, CUDA / cuDNN as
TensorFlow sees them), TensorFlow / Keras / Python versions and the machine's load average while it ran.

Every benchmark prints `describe_line()` before its figures and stores `describe()` in its JSON under
"hardware", so that a figure always says where it was measured. Import it after the script has set
TF_CPP_MIN_LOG_LEVEL (it imports TensorFlow).

    python benchmarks/hardware.py      # prints the line and the JSON
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

import keras
import tensorflow as tf


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when it is installed and answers."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    versions = sorted({line.strip() for line in out.splitlines() if line.strip()})
    return ", ".join(versions) or None


def gpus() -> list[dict[str, Any]]:
    """Each GPU TensorFlow sees: name and compute capability."""
    found = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (ValueError, RuntimeError):
            details = {}
        capability = details.get("compute_capability")
        found.append({"device": device.name, "name": details.get("device_name", "unknown GPU"),
                      "compute_capability": ".".join(str(c) for c in capability) if capability else None})
    return found


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (what `uptime` prints), where the OS has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe() -> dict[str, Any]:
    """Everything above, as a JSON-ready dict."""
    build = tf.sysconfig.get_build_info()
    found = gpus()
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cores(),
        "gpus": found,
        "nvidia_driver": _nvidia_driver() if found else None,
        "cuda_version": build.get("cuda_version") if build.get("is_cuda_build") else None,
        "cudnn_version": build.get("cudnn_version") if build.get("is_cuda_build") else None,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),
    }


def describe_line(info: dict[str, Any] | None = None) -> str:
    """One line: 'CPU AMD EPYC (2 cores), no GPU, TF 2.21.0, Keras 3.15.1, load 1.2 / 0.9 / 0.5 (1/5/15 min)'."""
    info = info or describe()
    if info["gpus"]:
        names = ", ".join(g["name"] for g in info["gpus"])
        gpu = (f"GPU {len(info['gpus'])}x {names} (driver {info['nvidia_driver'] or '?'}, "
               f"CUDA {info['cuda_version'] or '?'}, cuDNN {info['cudnn_version'] or '?'})")
    else:
        gpu = "no GPU"
    load = info["load_average"]
    load_text = f", load {' / '.join(f'{x:.1f}' for x in load)} (1/5/15 min)" if load else ""
    return (f"Hardware: CPU {info['cpu_model']} ({info['cpu_cores']} cores), {gpu}, TF {info['tensorflow']}, "
            f"Keras {info['keras']}{load_text}")


if __name__ == "__main__":
    details = describe()
    print(describe_line(details))
    print(json.dumps(details, indent=2))
    sys.exit(0)
