"""The CPU a figure was measured on, in words: the same model name covers CPUs with and without
AVX-512, and results (speed, and the numbers training reaches) differ between them."""
from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_description() -> str:
    """E.g. "AMD EPYC (family 25, model 1), 2 cores; avx2, no avx512f, no avx512_bf16, no amx_tile"."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    flags = set(fields.get("flags", "").split())
    named = ", ".join(flag if flag in flags else f"no {flag}" for flag in FLAGS_THAT_MATTER)
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}), {os.cpu_count()} cores; {named}")


if __name__ == "__main__":
    print(cpu_description())
