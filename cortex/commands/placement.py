"""`cortex load | unload | pin [--off]`: the gateway's `/fleet` routes (README: "The CLI").

The gateway answers a load only when it is done, which for a big model takes minutes. While
the call runs (on a worker thread), the command polls `GET /fleet` every second and shows on
stderr what the gateway reports for the model (`loading on beast`, ...) with the elapsed time:
redrawn in place on a terminal, one line per change in a log. The result is one line on stdout,
or with `--json` the gateway's answer with `seconds` (the command's wall time) added.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cortex.commands.client import Client, gateway_url
from cortex.output import Output, Ticker

# The gateway holds a load up to its cold_load_timeout (15 minutes by default); wait longer
# than that so the gateway's own answer, not ours, says what happened.
LOAD_TIMEOUT = 3600.0
POLL_INTERVAL = 1.0
TICK = 0.25

_VERBS = {"load": "loading", "unload": "unloading", "pin": "pinning", "unpin": "unpinning"}


def run_lifecycle(
    action: str, model: str, neuron: str | None, gateway: str | None, out: Output
) -> int:
    """Run `action` (load, unload, pin, unpin) for `model` and print the result; exit 0."""
    base = gateway_url(gateway)
    body: dict[str, Any] = {"model": model}
    if neuron:
        body["neuron"] = neuron
    route = action
    if action in ("pin", "unpin"):
        body["pinned"] = action == "pin"
        route = "pin"
    ticker = Ticker()
    result = _call_with_progress(Client(base), f"/fleet/{route}", body, out, ticker, action)
    seconds = round(ticker.elapsed, 3)
    document = dict(result) if isinstance(result, dict) else {"result": result}
    document.setdefault("seconds", seconds)
    out.result(document, _summary(action, model, document, seconds))
    return 0


def _call_with_progress(
    client: Client, path: str, body: dict[str, Any], out: Output, ticker: Ticker, action: str
) -> Any:
    """POST on a worker thread; meanwhile show what `/fleet` says about the model."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = client.post(path, body, timeout=LOAD_TIMEOUT)
        except BaseException as exc:  # re-raised on the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=call, name="cortex-fleet-call", daemon=True)
    worker.start()
    poller = Client(client.base_url, client.api_key, timeout=2.0)
    verb = f"{_VERBS[action]} {body['model']}"
    report, next_poll = "", ticker.start + POLL_INTERVAL
    while worker.is_alive():
        worker.join(TICK)
        if not worker.is_alive():
            break
        if time.monotonic() >= next_poll:
            report = _fleet_report(poller, body["model"]) or report
            next_poll = time.monotonic() + POLL_INTERVAL
        ticker.line(out, f"{verb}: {report}" if report else f"{verb}...")
    out.end_progress()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _fleet_report(client: Client, model: str) -> str:
    """What the fleet says about `model`, e.g. `loading on beast`; empty if it says nothing."""
    try:
        fleet = client.get("/fleet")
    except Exception:  # progress is best effort: the call itself reports real failures
        return ""
    places: list[str] = []
    for neuron in (fleet or {}).get("neurons") or []:
        for entry in neuron.get("models") or []:
            if entry.get("id") == model:
                device = f" {entry['device']}" if entry.get("device") else ""
                places.append(f"{entry.get('state', '?')} on {neuron.get('name', '?')}{device}")
    if not places:
        for entry in (fleet or {}).get("models") or []:
            if entry.get("id") == model:
                places = [
                    f"{loc.get('state', '?')} on {loc.get('neuron', '?')}"
                    for loc in entry.get("locations") or []
                ]
    return ", ".join(places)


def _summary(action: str, model: str, result: dict[str, Any], seconds: float) -> str:
    where = f" on {result['neuron']}" if result.get("neuron") else ""
    if action == "load":
        return f"loaded {model}{where} in {seconds:.1f}s"
    if action == "unload":
        return f"unloaded {model}{where.replace(' on ', ' from ', 1)}"
    return f"{action}ned {model}{where}"
