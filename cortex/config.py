"""cortex.toml, models.toml and neuron.toml as dataclasses (README: "Configuring a fleet").

Loading is strict: an unknown key, a wrong type or a bad value raises `ConfigError` naming the
file, the dotted key and what is wrong. Relative paths resolve against the file's directory.
Durations are `"30s"`, `"15m"`, `"1h"` or plain seconds; sizes are `"18GiB"`, `"512MB"` or bytes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.errors import ConfigError

DEFAULT_GATEWAY_LISTEN = "127.0.0.1:31313"
DEFAULT_METRICS_LISTEN = "127.0.0.1:31314"
DEFAULT_NEURON_LISTEN = "127.0.0.1:13131"


class Duration(float):
    """Seconds, parsed from `"30s"`, `"15m"`, `"1h"`, `"1h30m"` or a number."""


class ByteSize(int):
    """Bytes, parsed from `"18GiB"`, `"512MB"`, `"1.5G"` or a number."""


class ListenAddress(str):
    """`host:port`; `[::1]:port` for IPv6."""


class ResolvedPath(str):
    """A path, resolved against the config file's directory."""


class FieldError(ValueError):
    """A section's own check failed on one of its fields (the loader names file and key)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass
class GatewaySection:
    listen: ListenAddress = ListenAddress(DEFAULT_GATEWAY_LISTEN)
    metrics_listen: ListenAddress = ListenAddress(DEFAULT_METRICS_LISTEN)
    api_keys: list[str] = field(default_factory=list)
    cold_load_timeout: Duration = Duration(15 * 60)
    poll_interval: Duration = Duration(2.0)
    down_after_failures: int = 3
    stream_read_timeout: Duration = Duration(300.0)
    stall_timeout: Duration = Duration(5.0)
    max_body_bytes: ByteSize = ByteSize(64 * 2**20)
    #: Where the gateway keeps its state (the Responses API's stored responses); None: systemd's
    #: $STATE_DIRECTORY, else the platformdirs user state dir (see `gateway_state_dir`).
    state_dir: ResolvedPath | None = None
    #: How long stored responses (`store: true`) are kept; "0": forever.
    response_retention: Duration = Duration(30 * 86400)
    idle_timeout: Duration = Duration(15.0)
    body_timeout: Duration = Duration(60.0)
    max_connections: int = 4096
    metrics_auth: bool = False


@dataclass
class EvictionSection:
    strategy: str = "lru"
    defrag_after_cycles: int = 50
    idle_unload_after: Duration = Duration(0)


@dataclass
class NeuronEntry:
    name: str
    endpoint: str
    token: str = ""
    kind: str = "cortex"


@dataclass
class ModelEntry:
    id: str
    neurons: list[str] = field(default_factory=list)
    pin: bool = False
    priority: int = 100
    memory: ByteSize | None = None
    max_context: int | None = None
    dtype: str | None = None
    #: Quantize a safetensors model's linear weights at load: "int8", "int4" or "none".
    quantize: str | None = None

    def __post_init__(self) -> None:
        check_quantize(self.quantize)


@dataclass
class ModelsConfig:
    aliases: dict[str, str] = field(default_factory=dict)
    models: list[ModelEntry] = field(default_factory=list)
    path: Path | None = field(default=None, metadata={"internal": True})

    def entry(self, model_id: str) -> ModelEntry | None:
        """The placement profile for a model id (after alias resolution), if any."""
        return next((m for m in self.models if m.id == model_id), None)

    def resolve(self, name: str) -> str:
        """Resolve an alias to its model id; other names pass through."""
        return self.aliases.get(name, name)


@dataclass
class CortexConfig:
    models_config: ResolvedPath | None = None
    gateway: GatewaySection = field(default_factory=GatewaySection)
    eviction: EvictionSection = field(default_factory=EvictionSection)
    neurons: list[NeuronEntry] = field(default_factory=list)
    path: Path | None = field(default=None, metadata={"internal": True})
    models: ModelsConfig = field(default_factory=ModelsConfig, metadata={"internal": True})


@dataclass
class NeuronSection:
    name: str = ""
    listen: ListenAddress = ListenAddress(DEFAULT_NEURON_LISTEN)
    models_dirs: list[ResolvedPath] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    token: str = ""
    preload: list[str] = field(default_factory=list)
    hub_download: bool = False
    max_body_bytes: ByteSize = ByteSize(32 * 2**20)
    drain_timeout: Duration = Duration(30.0)
    idle_timeout: Duration = Duration(15.0)
    body_timeout: Duration = Duration(60.0)
    max_connections: int = 4096


@dataclass(frozen=True)
class EngineConfig:
    """neuron.toml's `[engine]` table, and the settings every model's engine runs with."""

    max_batch: int = 32
    #: Share of the device memory still free after the weights that the KV cache may take.
    kv_cache_memory: float = 0.85
    #: A cap on a CPU model's KV cache; unset, it is what `max_batch` sequences of the model's
    #: max_context need, within `kv_cache_memory` of the memory available after the weights.
    cpu_kv_cache_bytes: ByteSize | None = None
    block_size: int = 16
    #: Token budget of one engine step: one token for each running decode, the rest for prompt
    #: chunks. At least `max_batch` (every running sequence decodes in each step); it need not
    #: reach max_context, since a longer prompt prefills over several steps. Larger prefills
    #: faster, smaller keeps each step (so every stream's next token) shorter.
    max_num_batched_tokens: int = 2048
    prefix_cache: bool = True
    cuda_graphs: bool = True
    #: Compute threads of a CPU worker; 0: every core this process may run on.
    threads: int = 0
    #: Default `quantize` of safetensors models loaded without one: "int8", "int4" or "none".
    quantize: str | None = None

    def __post_init__(self) -> None:
        check_quantize(self.quantize)
        checks = (
            ("threads", self.threads >= 0, "must be 0 (every core) or more"),
            ("max_batch", self.max_batch >= 1, "must be at least 1"),
            ("kv_cache_memory", 0 < self.kv_cache_memory <= 1, "must be in (0, 1]"),
            ("block_size", self.block_size >= 1, "must be at least 1"),
            (
                "max_num_batched_tokens",
                self.max_num_batched_tokens >= max(1, self.max_batch),
                "must be at least max_batch (one decode token for every running sequence)",
            ),
        )
        for name, ok, problem in checks:
            if not ok:
                raise FieldError(name, problem)


QUANTIZE_VALUES = ("int8", "int4", "none")


def check_quantize(value: str | None) -> None:
    """Raise FieldError unless `value` is one of QUANTIZE_VALUES (or unset)."""
    if value is not None and value not in QUANTIZE_VALUES:
        raise FieldError("quantize", f"must be one of {', '.join(QUANTIZE_VALUES)}")


@dataclass
class NeuronConfig:
    neuron: NeuronSection = field(default_factory=NeuronSection)
    engine: EngineConfig = field(default_factory=EngineConfig)
    path: Path | None = field(default=None, metadata={"internal": True})


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def parse_duration(value: Any) -> Duration:
    """Seconds from a number or a string such as `"15m"` or `"1h30m"`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '15m', '1h' or seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return Duration(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return Duration(float(text))
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text.replace(" ", ""):
            return Duration(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))
    raise ValueError(f"{value!r} is not a duration such as '30s', '15m', '1h' or seconds")


def parse_size(value: Any) -> ByteSize:
    """Bytes from a number or a string such as `"18GiB"` (1024-based) or `"18GB"` (1000-based)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return ByteSize(value)
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
        number, unit, binary = m.groups()
        base = 1024 if binary or not unit else 1000
        return ByteSize(int(float(number) * base ** _SIZE_POWERS[unit.upper()]))
    raise ValueError(f"{value!r} is not a size such as '18GiB', '512MB' or bytes")


def parse_listen(value: Any) -> ListenAddress:
    """Check `host:port` (or `[v6]:port`) and return it unchanged."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return ListenAddress(value)
    raise ValueError(f"{value!r} is not a listen address such as '127.0.0.1:31313'")


def split_listen(address: str) -> tuple[str, int]:
    """`"[::1]:80"` -> `("::1", 80)`; `"0.0.0.0:13131"` -> `("0.0.0.0", 13131)`."""
    host, _, port = parse_listen(address).rpartition(":")
    return host.strip("[]"), int(port)


def _convert(value: Any, hint: Any, key: str, base: Path | None) -> Any:
    """Convert one TOML value to the field's type, or raise ValueError/TypeError."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, options[0], key, base)
    if hint is Duration:
        return parse_duration(value)
    if hint is ByteSize:
        return parse_size(value)
    if hint is ListenAddress:
        return parse_listen(value)
    if hint is ResolvedPath:
        if not isinstance(value, str):
            raise TypeError("expected a path string")
        path = Path(value).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return ResolvedPath(str(path))
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]", base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected a table, got {type(value).__name__}")
        _, item = typing.get_args(hint)
        return {k: _convert(v, item, f"{key}.{k}", base) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, base)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, float, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise TypeError(f"expected {hint.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type, data: Any, prefix: str, base: Path | None) -> Any:
    """Build dataclass `cls` from a TOML table, strictly."""
    if not isinstance(data, dict):
        raise _KeyProblem(prefix, f"expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    # Fields marked internal are filled by the loader, never read from the file.
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise _KeyProblem(key, f"unknown key (known keys here: {known})")
        try:
            kwargs[name] = _convert(value, hints[name], key, base)
        except _KeyProblem:
            raise
        except (TypeError, ValueError) as exc:
            raise _KeyProblem(key, str(exc)) from None
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise _KeyProblem(f"{prefix}.{name}" if prefix else name, "required key is missing")
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise _KeyProblem(f"{prefix}.{exc.name}" if prefix else exc.name, exc.problem) from None


class _KeyProblem(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _load(cls: type, path: Path, data: dict[str, Any] | None = None) -> Any:
    data = _read_toml(path) if data is None else data
    try:
        config = _build(cls, data, "", path.parent)
    except _KeyProblem as exc:
        raise ConfigError(f"{path}: key '{exc.key}': {exc.problem}") from None
    config.path = path
    return config


def _check(path: Path | None, key: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{path or '<defaults>'}: key '{key}': {problem}")


def _check_choice(path: Path | None, key: str, value: str, choices: tuple[str, ...]) -> None:
    options = ", ".join(repr(c) for c in choices)
    _check(path, key, value in choices, f"{value!r} is not one of {options}")


def load_models_config(path: str | os.PathLike[str]) -> ModelsConfig:
    """Load models.toml: aliases and placement profiles."""
    path = Path(path)
    config: ModelsConfig = _load(ModelsConfig, path)
    seen: set[str] = set()
    for i, model in enumerate(config.models):
        _check(path, f"models[{i}].id", model.id not in seen, f"duplicate model id {model.id!r}")
        seen.add(model.id)
    for alias, target in config.aliases.items():
        _check(path, f"aliases.{alias}", alias != target, "an alias cannot name itself")
    return config


def load_cortex_config(path: str | os.PathLike[str] | None) -> CortexConfig:
    """Load cortex.toml (and the models.toml it names); `None` gives the built-in defaults."""
    if path is None:
        return CortexConfig()
    path = Path(path)
    config: CortexConfig = _load(CortexConfig, path)
    _check_choice(path, "eviction.strategy", config.eviction.strategy, ("lru", "priority"))
    names: set[str] = set()
    for i, neuron in enumerate(config.neurons):
        _check(path, f"neurons[{i}].name", neuron.name not in names, "duplicate neuron name")
        _check(
            path,
            f"neurons[{i}].endpoint",
            neuron.endpoint.startswith(("http://", "https://")),
            "expected an http:// or https:// URL",
        )
        _check_choice(path, f"neurons[{i}].kind", neuron.kind, ("cortex", "openai"))
        names.add(neuron.name)
    if config.models_config:
        config.models = load_models_config(config.models_config)
    return config


def load_neuron_config(path: str | os.PathLike[str] | None) -> NeuronConfig:
    """Load neuron.toml; `None` gives the built-in defaults."""
    if path is None:
        return NeuronConfig()
    path = Path(path)
    return _load(NeuronConfig, path)


def gateway_state_dir(section: GatewaySection) -> Path:
    """The gateway's state directory: `[gateway] state_dir`, else `$STATE_DIRECTORY` (set by
    systemd's `StateDirectory=`: /var/lib/cortex in the packaged unit), else the platformdirs
    user state dir (`~/.local/state/cortex`)."""
    if section.state_dir:
        return Path(section.state_dir)
    if value := os.environ.get("STATE_DIRECTORY"):
        return Path(value.split(":")[0])
    import platformdirs

    return Path(platformdirs.user_state_dir("cortex"))


def config_search_path(filename: str, env_var: str) -> list[Path]:
    """Where a config file is looked for, in order (after an explicit `--config`)."""
    import platformdirs

    paths = []
    if value := os.environ.get(env_var):
        paths.append(Path(value))
    paths.append(Path("/etc/cortex") / filename)
    paths.append(Path(platformdirs.user_config_dir("cortex")) / filename)
    return paths


def find_config(explicit: str | None, filename: str, env_var: str) -> Path | None:
    """The config file to use: `explicit` if given (it must exist), else the first found."""
    if explicit:
        return Path(explicit)
    env_value = os.environ.get(env_var)
    if env_value:
        return Path(env_value)
    return next((p for p in config_search_path(filename, env_var) if p.is_file()), None)
