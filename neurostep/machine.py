"""What machine this process runs on, as the benchmarks' results and the tuned kernel settings record it."""

from __future__ import annotations

import platform
import subprocess


def _first_processor(cpuinfo: str) -> dict[str, str]:
    """The fields of the first processor's block of ``cpuinfo`` (``/proc/cpuinfo``'s format), lower-case keys;
    {} where the file cannot be read."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    break                      # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
    except OSError:
        return {}
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), else what ``platform`` knows."""
    name = _first_processor("/proc/cpuinfo").get("model name")
    if name:
        return name
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5, check=False)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_signature(cpuinfo: str = "/proc/cpuinfo") -> str:
    """What tells apart CPUs that share a model name: on x86 Linux the family and model numbers and whether the
    cores have AVX-512 (``"family 25 model 1, AVX2"``); else ``""``. Two AMD EPYC machines of one cloud both
    call themselves "AMD EPYC": a Zen 3 (model 1, AVX2) and a Zen 4 (model 17, AVX-512) run the same kernels
    at different speeds and round the same training differently (oneDNN and MKL pick per instruction set)."""
    fields = _first_processor(cpuinfo)
    if "cpu family" not in fields or "model" not in fields:
        return ""
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"family {fields['cpu family']} model {fields['model']}, {isa}"


__all__ = ["cpu_model", "cpu_signature"]
