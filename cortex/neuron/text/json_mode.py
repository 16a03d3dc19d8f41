"""`response_format: json_object`: make the answer parse as JSON without an engine token mask.

How (a forced prefix plus a guard, chosen because the engine's sampler takes no logits mask):
1. the answer is forced to start with `{`: that token is appended to the prompt (the model
   continues an object it has already opened) and `{` is the first content the client sees;
2. `JsonGuard` follows the generated text character by character with a JSON pushdown
   recogniser. Text is passed on while it remains a valid prefix of a JSON object; the first
   character that would break it ends generation (the caller cancels the request), and so does
   the object's closing brace;
3. at the end, `closing()` gives the shortest suffix that completes what was sent (closes an
   open string, finishes a number or literal, gives a dangling key a `null`, closes containers).

So the concatenated content always parses with `json.loads` as an object; a model that writes
JSON naturally is passed through untouched.
"""

from __future__ import annotations

import re

_NUMBER_RE = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_LITERALS = {"t": "true", "f": "false", "n": "null"}

# Parser states.
_VALUE, _KEY_OR_END, _KEY, _COLON, _VALUE_OR_END, _AFTER = range(6)
_STRING, _ESCAPE, _UNICODE, _NUMBER, _LITERAL, _DONE = range(6, 12)


class JsonGuard:
    """Accepts text while it stays a valid prefix of one JSON object."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.state = _VALUE
        self.string_is_key = False
        self.hex_left = 0
        self.token = ""  # the number or literal being read
        self.finished = False
        self.text = ""
        if self.feed("{") != "{":
            raise AssertionError("JsonGuard must accept its own opening brace")

    def feed(self, text: str) -> str:
        """The longest prefix of `text` that keeps the output valid; sets `finished` when the
        object is complete or the text broke it."""
        accepted = []
        for ch in text:
            if self.finished or not self._step(ch):
                self.finished = True
                break
            accepted.append(ch)
            if self.state == _DONE:
                self.finished = True
                break
        out = "".join(accepted)
        self.text += out
        return out

    def _step(self, ch: str) -> bool:
        state = self.state
        if state == _STRING:
            if ch == "\\":
                self.state = _ESCAPE
            elif ch == '"':
                self.state = _COLON if self.string_is_key else self._after_value()
            elif ord(ch) < 0x20:
                return False
            return True
        if state == _ESCAPE:
            if ch == "u":
                self.state, self.hex_left = _UNICODE, 4
                return True
            if ch not in '"\\/bfnrt':
                return False
            self.state = _STRING
            return True
        if state == _UNICODE:
            if ch not in "0123456789abcdefABCDEF":
                return False
            self.hex_left -= 1
            if not self.hex_left:
                self.state = _STRING
            return True
        if state == _NUMBER:
            # A valid number prefix is one that "0" completes (or that is complete already).
            if any(_NUMBER_RE.fullmatch(self.token + ch + tail) for tail in ("", "0")):
                self.token += ch
                return True
            if not self._number_complete():
                return False
            self.state = self._after_value()
            return self._step(ch)
        if state == _LITERAL:
            word = _LITERALS[self.token[0]]
            if word.startswith(self.token + ch):
                self.token += ch
                if self.token == word:
                    self.state = self._after_value()
                return True
            return False
        if ch in " \t\r\n":
            return True
        if state in (_VALUE, _VALUE_OR_END):
            if state == _VALUE_OR_END and ch == "]":
                return self._close("[")
            return self._start_value(ch)
        if state in (_KEY_OR_END, _KEY):
            if state == _KEY_OR_END and ch == "}":
                return self._close("{")
            if ch == '"':
                self.state, self.string_is_key = _STRING, True
                return True
            return False
        if state == _COLON:
            if ch == ":":
                self.state = _VALUE
                return True
            return False
        if state == _AFTER:
            top = self.stack[-1]
            if ch == ",":
                self.state = _KEY if top == "{" else _VALUE
                return True
            return self._close(top) if ch == {"{": "}", "[": "]"}[top] else False
        return False

    def _start_value(self, ch: str) -> bool:
        if ch in "{[":
            if not self.stack and ch == "[":
                return False  # json_object: the top level is an object
            self.stack.append(ch)
            self.state = _KEY_OR_END if ch == "{" else _VALUE_OR_END
        elif not self.stack:
            return False
        elif ch == '"':
            self.state, self.string_is_key = _STRING, False
        elif ch == "-" or ch.isdigit():
            self.state, self.token = _NUMBER, ch
        elif ch in _LITERALS:
            self.state, self.token = _LITERAL, ch
        else:
            return False
        return True

    def _close(self, opener: str) -> bool:
        if not self.stack or self.stack[-1] != opener:
            return False
        self.stack.pop()
        self.state = self._after_value()
        return True

    def _after_value(self) -> int:
        return _AFTER if self.stack else _DONE

    def _number_complete(self) -> bool:
        return bool(_NUMBER_RE.fullmatch(self.token))

    def closing(self) -> str:
        """The suffix that makes everything accepted so far a complete JSON object."""
        out = ""
        state = self.state
        if state == _ESCAPE:
            out, state = "\\", _STRING
        if state == _UNICODE:
            out, state = "0" * self.hex_left, _STRING
        if state == _STRING:
            out += '"'
            state = _COLON if self.string_is_key else _AFTER
        if state == _NUMBER and not self._number_complete():
            out += "0"
        elif state == _LITERAL:
            out += _LITERALS[self.token[0]][len(self.token) :]
        elif state == _COLON:
            out += ":null"
        elif state == _KEY:
            out += '"":null'
        elif state == _VALUE and self.stack:
            out += "null"
        for opener in reversed(self.stack):
            out += "}" if opener == "{" else "]"
        return out
