"""Versions that tell the truth: from git, in RPM form that sorts right, shown by every build.

The git scheme runs setuptools-scm with this project's pyproject.toml on throwaway
repositories; the ordering uses rpm's own comparison (`rpm.vercmp` in rpm's Lua); the builds
are build/pyz.py's archive, whose `--version`, neuron `/health` and gateway User-Agent must all
be the stamp.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.packaging.rpmtools import build_common, needs
from tests.support.neuron_proc import stop_process

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false"]


def git_version(repo: Path) -> str:
    """`python -m setuptools_scm` in `repo` (this project's configuration, no pretend stamp)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETUPTOOLS_SCM")}
    done = subprocess.run(
        [sys.executable, "-m", "setuptools_scm"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def commit(repo: Path, name: str) -> str:
    """Add a file, commit it; the short hash setuptools-scm shows (its first 7 characters)."""
    (repo / name).write_text(name, encoding="utf-8")
    subprocess.run([*GIT, "add", name], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", name], cwd=repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    )
    return head.stdout.strip()[:7]


def test_git_gives_the_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "cortex").mkdir()  # where version_file goes
    sha = commit(repo, "first")
    # No tag yet: a development version below any release, naming the commit.
    assert re.fullmatch(rf"0\.1\.dev1\+g{sha}[0-9a-f]*", git_version(repo))
    subprocess.run([*GIT, "tag", "v0.2.0"], cwd=repo, check=True)
    assert git_version(repo) == "0.2.0"
    sha = commit(repo, "second")
    assert re.fullmatch(rf"0\.2\.1\.dev1\+g{sha}[0-9a-f]*", git_version(repo))
    commit(repo, "third")
    assert git_version(repo).startswith("0.2.1.dev2+g")


def test_rpm_form_of_versions() -> None:
    rpm_version = build_common().rpm_version
    assert rpm_version("0.2.0") == "0.2.0"
    assert rpm_version("0.2.1.dev3+gabc1234") == "0.2.1~dev3+gabc1234"
    assert rpm_version("0.2.1rc1") == "0.2.1~rc1"
    assert rpm_version("0.2.1rc2.dev1+gabc1234.d20260101") == "0.2.1~rc2~dev1+gabc1234.d20260101"
    assert rpm_version("0.2.0.post1") == "0.2.0.post1"
    with pytest.raises(SystemExit):
        rpm_version("1!2.0")


@needs("rpm")
def test_rpm_sorts_prereleases_between_releases() -> None:
    # Oldest first, as PEP 440 sorts them; rpm must agree on each neighbouring pair.
    ordered = [
        "0.1.0",
        "0.2.0",
        "0.2.0.post1",
        "0.2.1.dev3+gfff0000",
        "0.2.1.dev10+gabc1234",
        "0.2.1rc1",
        "0.2.1rc2.dev1+gabc1234",
        "0.2.1rc2",
        "0.2.1",
        "0.2.2.dev1+g0000000",
        "0.10.0",
    ]
    evrs = [f"{build_common().rpm_version(v)}-1" for v in ordered]
    script = " ".join(
        f"%{{lua: print(rpm.vercmp('{older}', '{newer}'))}}"
        for older, newer in zip(evrs, evrs[1:], strict=False)
    )
    done = subprocess.run(["rpm", "--eval", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["-1"] * (len(evrs) - 1), list(
        zip(evrs, done.stdout.split(), strict=False)
    )


class _Recorder(BaseHTTPRequestHandler):
    """A neuron stand-in that answers /health and /models and records each User-Agent."""

    agents: list[str] = []

    def do_GET(self) -> None:
        type(self).agents.append(self.headers.get("User-Agent", ""))
        if self.path == "/health":
            body = {"status": "ok", "node": "rec", "version": "x", "devices": [], "models": []}
        else:
            body = {"object": "list", "data": []}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    _Recorder.agents = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.agents
    finally:
        server.shutdown()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(condition, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(log.read_text(errors="replace")[-4000:])


def test_a_build_shows_its_stamp_everywhere(
    built_pyz: Path, tmp_path: Path, recorder: tuple[str, list[str]]
) -> None:
    """--version, the neuron's /health and the gateway's User-Agent: all the git version."""
    version = build_common().project_version()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env.pop("PYTHONPATH", None)
    env["CORTEX_PYZ_CACHE"] = str(tmp_path / "cache")
    shown = subprocess.run(
        [sys.executable, str(built_pyz), "--version"], env=env, capture_output=True, text=True
    )
    assert shown.stdout == f"cortex {version}\n", shown.stderr

    url, agents = recorder
    log_path = tmp_path / "servers.log"
    neuron_port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    with log_path.open("w") as log:
        # The archive's own cortex runs the neuron too, with this Python's torch.
        neuron = subprocess.Popen(
            [sys.executable, str(built_pyz), "neuron", "--listen", f"127.0.0.1:{neuron_port}"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )
        gateway = subprocess.Popen(
            [sys.executable, "-S", str(built_pyz), "serve", "--neuron", url]
            + ["--listen", f"127.0.0.1:{gateway_port}"]
            + ["--metrics-listen", f"127.0.0.1:{metrics_port}"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )
    try:
        health_url = f"http://127.0.0.1:{neuron_port}/health"
        wait_for(lambda: get_json(health_url)["status"] == "ok", neuron, log_path)
        assert get_json(health_url)["version"] == version
        wait_for(lambda: bool(agents), gateway, log_path)
        assert agents[0] == f"cortex/{version}"
    finally:
        for proc in (gateway, neuron):
            stop_process(proc, None, 30)
