"""`cortex probe`: the smoke test to run after every deploy (README: "The CLI").

Steps, each timed, against a gateway or a neuron URL:
1. `health`: `GET /health`. Its shape tells what answered: a neuron reports `devices` and
   `models`, a gateway `neurons: {up, total}`. A draining neuron or a gateway with no neuron
   up fails here.
2. `load`: the model (`--model`, else the first loaded one, else the first one listed) is
   loaded if it is not yet: `POST /fleet/load` on a gateway, `POST /models/load` on a neuron.
3. `completion`: one completion at temperature 0. A chat completion is tried first; a model
   without a chat template answers that with a 400 whose message names the template, and the
   probe then sends the prompt as a plain `/v1/completions` (the step's detail says which).
4. `check`: the answer contains `--expect`, case-insensitively (without `--expect`: the answer
   is not empty).

Exit 0 when every step passed, 1 when one failed, 3 when the URL could not be reached at all.
`--json` prints `{"ok", "url", "model", "answer", "steps": [{"name", "ok", "seconds",
"detail"}]}`; steps after a failed one are not run and not listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cortex.commands.client import Client, gateway_url, remote_error
from cortex.errors import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, CortexError, Unreachable
from cortex.output import Output

DEFAULT_PROMPT = "Reply with one word: what is the capital of France?"
MAX_TOKENS = 32
STEPS = ("health", "load", "completion", "check")


@dataclass
class Step:
    """One timed probe step as reported."""

    name: str
    ok: bool
    seconds: float
    detail: str


class _StepFailed(Exception):
    """A step found something wrong (as opposed to an error raised by a call)."""


class Probe:
    """One probe run: the target, the model, the steps so far."""

    def __init__(self, url: str | None, model: str | None, timeout: float) -> None:
        self.url = gateway_url(url)
        self.model = model
        self.client = Client(self.url, timeout=timeout)
        self.kind = ""
        self.answer: str | None = None
        self.steps: list[Step] = []
        self._last_error: BaseException | None = None

    def run(self, prompt: str, expect: str | None) -> int:
        """Run the steps until one fails; the exit code."""
        actions = (
            self._health,
            self._load,
            lambda: self._complete(prompt),
            lambda: self._check(expect),
        )
        for name, action in zip(STEPS, actions, strict=True):
            if not self._step(name, action):
                unreachable = name == "health" and isinstance(self._last_error, Unreachable)
                return EXIT_UNREACHABLE if unreachable else EXIT_FAILED
        return EXIT_OK

    def report(self) -> dict[str, Any]:
        """The `--json` document."""
        return {
            "ok": len(self.steps) == len(STEPS) and all(s.ok for s in self.steps),
            "url": self.url,
            "model": self.model,
            "answer": self.answer,
            "steps": [asdict(s) for s in self.steps],
        }

    def _step(self, name: str, action: Callable[[], str]) -> bool:
        start = time.monotonic()
        try:
            detail, ok = action(), True
        except (CortexError, _StepFailed) as exc:
            self._last_error = exc
            detail, ok = getattr(exc, "message", None) or str(exc), False
        except (KeyError, TypeError, AttributeError) as exc:  # a malformed answer
            self._last_error = exc
            detail, ok = f"unexpected answer from {self.url}: {exc!r}", False
        self.steps.append(Step(name, ok, round(time.monotonic() - start, 3), detail))
        return ok

    def _health(self) -> str:
        health = self.client.get("/health")
        if not isinstance(health, dict):
            raise _StepFailed(f"{self.url}/health did not answer a JSON object")
        status = health.get("status")
        if "neurons" in health:
            self.kind = "gateway"
            neurons = health["neurons"] or {}
            up, total = neurons.get("up", 0), neurons.get("total")
            if not up:
                raise _StepFailed(f"gateway {status}: no neuron up (0/{total})")
            return f"gateway {status}, {up}/{total} neurons up"
        if "devices" in health or "node" in health:
            self.kind = "neuron"
            if status != "ok":
                raise _StepFailed(f"neuron {health.get('node', '')} is {status}")
            return f"neuron {health.get('node', '')} {status}, version {health.get('version')}"
        raise _StepFailed(f"{self.url}/health is neither a cortex gateway nor a neuron")

    def _load(self) -> str:
        loaded, listed = self._catalogue()
        if self.model is None:
            choices = loaded or listed
            if not choices:
                raise _StepFailed("no model is loaded or available; name one with --model")
            self.model = choices[0]
        if self.model in loaded:
            return f"{self.model} already loaded"
        path = "/fleet/load" if self.kind == "gateway" else "/models/load"
        result = self.client.post(path, {"model": self.model})
        where = (result or {}).get("neuron") or (result or {}).get("device") or ""
        return f"loaded {self.model}" + (f" on {where}" if where else "")

    def _catalogue(self) -> tuple[list[str], list[str]]:
        """Model ids (loaded ones, all listed ones) as the target reports them."""
        if self.kind == "gateway":
            entries = (self.client.get("/v1/models") or {}).get("data") or []
            loaded = [e["id"] for e in entries if (e.get("cortex") or {}).get("state") == "loaded"]
        else:
            entries = (self.client.get("/models") or {}).get("data") or []
            loaded = [e["id"] for e in entries if e.get("state") == "loaded"]
        return loaded, [e["id"] for e in entries if "id" in e]

    def _complete(self, prompt: str) -> str:
        common = {"model": self.model, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": False}
        chat = dict(common, messages=[{"role": "user", "content": prompt}])
        answer = self.client.request("POST", "/v1/chat/completions", chat)
        if answer.status < 400:
            self.answer = _text(answer.data, chat=True)
            return f"chat completion: {self.answer!r}"
        if answer.status != 400 or "template" not in _message(answer.data).lower():
            raise remote_error(answer.status, answer.data, self.url + "/v1/chat/completions")
        data = self.client.post("/v1/completions", dict(common, prompt=prompt))
        self.answer = _text(data, chat=False)
        return f"plain completion (no chat template): {self.answer!r}"

    def _check(self, expect: str | None) -> str:
        answer = self.answer or ""
        if expect is None:
            if not answer.strip():
                raise _StepFailed("the answer is empty")
            return "answer is not empty (no --expect given)"
        if expect.lower() not in answer.lower():
            raise _StepFailed(f"answer does not contain {expect!r}")
        return f"answer contains {expect!r}"


def run_probe(
    url: str | None,
    model: str | None,
    prompt: str | None,
    expect: str | None,
    timeout: float,
    out: Output,
) -> int:
    """Run the probe, print its report, and return its exit code."""
    probe = Probe(url, model, timeout)
    code = probe.run(prompt or DEFAULT_PROMPT, expect)
    report = probe.report()
    if code != EXIT_OK:
        failed = probe.steps[-1]
        out.log(f"cortex: probe failed at {failed.name}: {failed.detail}")
    out.result(report, _render(report))
    return code


def _render(report: dict[str, Any]) -> str:
    lines = [f"probe {report['url']}" + (f" model {report['model']}" if report["model"] else "")]
    for step in report["steps"]:
        mark = "ok  " if step["ok"] else "FAIL"
        lines.append(f"  {mark} {step['name']:<10} {step['seconds']:>7.2f}s  {step['detail']}")
    lines.append("probe ok" if report["ok"] else "probe FAILED")
    return "\n".join(lines)


def _text(data: Any, chat: bool) -> str:
    choice = ((data or {}).get("choices") or [{}])[0]
    if chat:
        return (choice.get("message") or {}).get("content") or ""
    return choice.get("text") or ""


def _message(data: Any) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    return str(error.get("message", "")) if isinstance(error, dict) else ""
