"""`cortex status`: the fleet as the gateway sees it (`GET /fleet`, README: "The CLI").

`--json` prints the `/fleet` document unchanged. The table is for people: one block per neuron
(state, endpoint, when last seen), its devices with a memory bar (used / total), the models on
it with state, device, memory, requests in flight, idle time and a pin mark, the models it has
on disk, then the fleet's models with their pins and locations. Fields the gateway leaves out show as `-`.
"""

from __future__ import annotations

import time
from typing import Any

from cortex.commands.client import Client, gateway_url
from cortex.output import Output

BAR_WIDTH = 20
MAX_AVAILABLE_SHOWN = 8


def run_status(gateway: str | None, out: Output) -> int:
    """Fetch `/fleet` from the gateway and print it; exit 0 (errors raise)."""
    fleet = Client(gateway_url(gateway)).get("/fleet")
    out.result(fleet, render_fleet(fleet))
    return 0


def render_fleet(fleet: dict[str, Any], now: float | None = None) -> str:
    """The readable fleet table."""
    now = time.time() if now is None else now
    pinned = {m.get("id") for m in fleet.get("models") or [] if m.get("pinned")}
    neurons = fleet.get("neurons") or []
    up = sum(1 for n in neurons if n.get("state") == "up")
    lines = [f"neurons: {up}/{len(neurons)} up"]
    for neuron in neurons:
        lines.append("")
        lines.extend(_neuron_block(neuron, pinned, now))
    lines.append("")
    lines.extend(_models_block(fleet.get("models") or []))
    return "\n".join(lines)


def _neuron_block(neuron: dict[str, Any], pinned: set[Any], now: float) -> list[str]:
    seen = _ago(neuron.get("last_seen"), now)
    lines = [
        f"{neuron.get('name', '-')}  {neuron.get('state', '-')}  {neuron.get('endpoint', '-')}"
        + (f"  (seen {seen})" if seen else "")
    ]
    devices = neuron.get("devices") or []
    width = max((len(str(d.get("id", "-"))) for d in devices), default=0)
    for device in devices:
        lines.append("  " + _device_line(device, width))
    models = neuron.get("models") or []
    if models:
        rows = [["MODEL", "STATE", "DEVICE", "MEMORY", "IN-FLIGHT", "IDLE", "PIN"]]
        for model in models:
            rows.append(
                [
                    str(model.get("id", "-")),
                    str(model.get("state", "-")),
                    str(model.get("device") or "-"),
                    human_bytes(model.get("bytes")),
                    _text(model.get("in_flight")),
                    _seconds(model.get("idle_s")),
                    "pinned" if model.get("id") in pinned else "",
                ]
            )
        lines.extend("  " + row for row in table(rows))
    else:
        lines.append("  no models loaded")
    available = neuron.get("available") or []
    if available:
        shown = ", ".join(str(a) for a in available[:MAX_AVAILABLE_SHOWN])
        more = len(available) - MAX_AVAILABLE_SHOWN
        lines.append(f"  on disk: {shown}" + (f" and {more} more" if more > 0 else ""))
    return lines


def _device_line(device: dict[str, Any], width: int) -> str:
    total, free = device.get("total_bytes"), device.get("free_bytes")
    name = str(device.get("id", "-")).ljust(width)
    label = f" {device['name']}" if device.get("name") else ""
    if not isinstance(total, int | float) or not isinstance(free, int | float) or total <= 0:
        return f"{name}{label}  memory unknown"
    used = max(0, total - free)
    return f"{name}  {memory_bar(used, total)} {human_bytes(used)} / {human_bytes(total)}{label}"


def _models_block(models: list[dict[str, Any]]) -> list[str]:
    if not models:
        return ["models: none loaded or pinned"]
    rows = [["MODEL", "PIN", "LOCATIONS"]]
    for model in models:
        places = ", ".join(
            f"{loc.get('neuron', '?')} ({loc.get('state', '?')})"
            for loc in model.get("locations") or []
        )
        rows.append([str(model.get("id", "-")), "pinned" if model.get("pinned") else "", places])
    return ["models:", *("  " + row for row in table(rows))]


def table(rows: list[list[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart (trailing blanks trimmed)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def memory_bar(used: float, total: float, width: int = BAR_WIDTH) -> str:
    """`[#######.............]` filled by the used share."""
    filled = round(width * min(1.0, used / total)) if total > 0 else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def human_bytes(value: Any) -> str:
    """`17.3 GiB`, `512 MiB`; `-` for a missing value."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.0f}m"


def _ago(value: Any, now: float) -> str:
    """`last_seen` as an age: epoch seconds become `3s ago`; other forms print as given."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value > 1e9:
            return f"{max(0.0, now - value):.0f}s ago"
        return f"{value:.0f}s ago"
    return str(value) if value else ""
