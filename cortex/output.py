"""One output sink for the CLI's client commands, and one error path.

Streams, for people and for scripts alike:
- stdout carries the result: human text, or with `--json` exactly one JSON document, also when
  the command fails (then `{"error": {"message", "code", "exit_code"}}`), so `cortex ... --json
  | jq` never sees an empty or a half document;
- stderr carries everything else: logs, progress lines, the error message.

Exit codes come from `cortex.errors` (README: "The CLI"): 0 ok, 1 the operation failed,
2 usage or configuration, 3 the server could not be reached.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from cortex.errors import EXIT_OK, CortexError


class Output:
    """Where a command writes: its one result to stdout, progress and logs to stderr."""

    def __init__(
        self, json_mode: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.live = self.stderr.isatty()
        self._progress_shown = ""

    def result(self, document: Any, text: str) -> None:
        """Print the command's result: `document` as JSON with `--json`, else `text`."""
        self.end_progress()
        if self.json_mode:
            self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        elif text:
            self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def log(self, message: str) -> None:
        """A line for people, on stderr."""
        self.end_progress()
        self.stderr.write(message + "\n")
        self.stderr.flush()

    def progress(self, line: str) -> None:
        """Show a progress line on stderr.

        On a terminal the line is redrawn in place; elsewhere (a log, a pipe) a line is written
        only when its text changes, so logs stay short. Callers keep volatile parts such as the
        elapsed seconds out of `line` when they want fewer lines in logs (see `Ticker`).
        """
        if self.live:
            self.stderr.write("\r\x1b[2K" + line)
            self._progress_shown = line
        elif line != self._progress_shown:
            self.stderr.write(line + "\n")
            self._progress_shown = line
        self.stderr.flush()

    def end_progress(self) -> None:
        """Finish a live progress line so the next output starts on a fresh line."""
        if self.live and self._progress_shown:
            self.stderr.write("\r\x1b[2K")
            self.stderr.flush()
        self._progress_shown = ""

    def error(self, error: CortexError) -> int:
        """Report `error` (stderr; with `--json` also a document on stdout); return its exit code."""
        self.end_progress()
        self.stderr.write(f"cortex: error: {error.message}\n")
        self.stderr.flush()
        if self.json_mode:
            body = {"message": error.message, "code": error.code, "exit_code": error.exit_code}
            body.update({k: v for k, v in error.extra.items() if _is_json_scalar(v)})
            self.stdout.write(json.dumps({"error": body}, indent=2, ensure_ascii=False) + "\n")
            self.stdout.flush()
        return error.exit_code


class Ticker:
    """Elapsed-time bookkeeping for a progress display."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the ticker started."""
        return time.monotonic() - self.start

    def line(self, out: Output, text: str) -> None:
        """Show `text` with the elapsed time on a terminal, and `text` alone in logs."""
        out.progress(f"{text} ({self.elapsed:.0f}s)" if out.live else text)


def run_command(out: Output, command: Callable[[], int | None]) -> int:
    """Run a client command; turn a `CortexError` into its message and exit code."""
    try:
        code = command()
    except CortexError as exc:
        return out.error(exc)
    except KeyboardInterrupt:
        out.end_progress()
        return 130
    return EXIT_OK if code is None else code


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
