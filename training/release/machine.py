"""Which CPU a speed figure was measured on: int8's speed depends on its instruction sets.

LiteRT's int8 kernels (XNNPACK) are several times faster than float32 only with the dot-product
instructions AVX-512 VNNI or AVX-VNNI; with AVX2 alone the two engines run at about the same
speed. So every speed figure the release checks record names the CPU and what it has.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# /proc/cpuinfo flag -> the name a reader knows, fastest int8 first.
INSTRUCTION_SETS = (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def cpu_fields(cpuinfo: str) -> tuple[str, set[str]]:
    """(the CPU's model name, its flags) from /proc/cpuinfo's text."""
    name, flags = "", set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def describe_machine(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> dict:
    """{"cpu", "cores", "instruction_sets"}: the CPU, the cores this process sees, and which of
    INSTRUCTION_SETS it has."""
    text = cpuinfo_path.read_text() if cpuinfo_path.exists() else ""
    name, flags = cpu_fields(text)
    return {
        "cpu": name or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "instruction_sets": [label for flag, label in INSTRUCTION_SETS if flag in flags],
    }


def machine_label(machine: dict) -> str:
    """'2 cores, AMD EPYC 9R14, AVX-512 VNNI': the CPU and its best int8 instructions."""
    best = machine["instruction_sets"][0] if machine["instruction_sets"] else "no AVX2"
    return f"{machine['cores']} cores, {machine['cpu']}, {best}"
