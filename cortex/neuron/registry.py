"""Finding models on disk by id (README: "Model directories and ids").

Roots, searched in order:
1. each `models_dirs` entry: the id is the model directory's path relative to it (`Org/Name`,
   `qwen3-8b`), or a `.gguf` file's relative path;
2. the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
   `~/.cache/huggingface/hub`, as huggingface_hub resolves it): `models--Org--Name` is id
   `Org/Name`, served from `snapshots/<refs/main>` (the newest snapshot when there is no ref);
3. with `hub_download` on, the hub itself (`huggingface_hub.snapshot_download`, at load time).

Id safety: an id is a relative POSIX path of plain names. `..`, `.`, empty components,
absolute paths, backslashes and NUL are refused with 400 before the file system is touched.
Every directory the id walks through must resolve inside its root, so a symlink used as an
intermediate component cannot lead out (400). The last component may be a symlink: linking a
model directory into a models dir is how operators share one copy of the weights.

A model directory holds `config.json` and `*.safetensors`; a `.gguf` file (or a directory holding
one and no safetensors) is a GGUF model whose details come from `cortex.neuron.models.gguf`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cortex.errors import InvalidRequest, ModelNotFound, quoted

MAX_DEPTH = 3  # Org/Family/Name at most below a models dir
MAX_ID_CHARS = 1024


@dataclass(frozen=True)
class ModelLocation:
    """Where a model id was found."""

    id: str
    path: Path
    format: str  # "safetensors" | "gguf"
    source: str  # "models_dir" | "hf_cache" | "hub"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, resolved as huggingface_hub does."""
    if value := os.environ.get("HF_HUB_CACHE"):
        return Path(value).expanduser()
    if value := os.environ.get("HF_HOME"):
        return Path(value).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def check_id(model_id: Any) -> list[str]:
    """The id's path components; `InvalidRequest` (400) for anything that could escape a root."""
    if not isinstance(model_id, str) or not model_id:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    if len(model_id) > MAX_ID_CHARS or any(len(p.encode()) > 255 for p in model_id.split("/")):
        # Longer than any path the filesystem takes (ENAMETOOLONG otherwise).
        raise InvalidRequest(
            f"invalid model id {quoted(model_id)}: longer than {MAX_ID_CHARS} characters or a "
            "part longer than 255 bytes",
            param="model",
        )
    parts = model_id.split("/")
    if (
        "\x00" in model_id
        or "\\" in model_id
        or model_id.startswith(("/", "~"))
        or (len(model_id) > 1 and model_id[1] == ":")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidRequest(
            f"invalid model id {quoted(model_id)}: it must not leave the models directories",
            param="model",
        )
    return parts


def model_format(path: Path) -> str | None:
    """`safetensors`, `gguf`, or None when `path` holds no model."""
    if path.is_file():
        return "gguf" if path.suffix == ".gguf" else None
    if not path.is_dir() or not (path / "config.json").is_file():
        return "gguf" if path.is_dir() and any(path.glob("*.gguf")) else None
    if any(path.glob("*.safetensors")):
        return "safetensors"
    return "gguf" if any(path.glob("*.gguf")) else None


class ModelRegistry:
    """Resolves model ids to locations and lists every model found."""

    def __init__(self, models_dirs: list[Path], hub_download: bool = False) -> None:
        self.models_dirs = [Path(d).expanduser() for d in models_dirs]
        self.hub_download = hub_download

    def _in_dir(self, root: Path, parts: list[str]) -> Path | None:
        real_root = root.resolve()
        current = root
        for part in parts[:-1]:
            current = current / part
            if not current.resolve().is_relative_to(real_root):
                raise InvalidRequest(
                    f"invalid model id {quoted('/'.join(parts))}: it leads out of its models "
                    "directory",
                    param="model",
                )
        candidate = current / parts[-1]
        return candidate if model_format(candidate) else None

    def _in_cache(self, parts: list[str]) -> Path | None:
        if len(parts) != 2:
            return None
        repo = hf_cache_dir() / f"models--{parts[0]}--{parts[1]}"
        return snapshot_dir(repo)

    def resolve(self, model_id: Any) -> ModelLocation:
        """The location of `model_id`; 400 for an unsafe id, 404 `model_not_found` if absent."""
        parts = check_id(model_id)
        for root in self.models_dirs:
            if root.is_dir() and (path := self._in_dir(root, parts)):
                return ModelLocation(model_id, path, model_format(path) or "", "models_dir")
        path = self._in_cache(parts)
        if path is not None and (fmt := model_format(path)):
            return ModelLocation(model_id, path, fmt, "hf_cache")
        raise ModelNotFound(
            f"model {quoted(model_id)} not found in the models directories or HF cache",
            param="model",
        )

    def canonical_id(self, model_id: str) -> str:
        """The id a model is loaded under: a GGUF file's id (`Dir/file.gguf`) becomes its
        directory's (`Dir`) when that directory, as a model id, loads that very file, so both
        ids share one copy of the weights. Any other id is its own."""
        parts = check_id(model_id)
        if len(parts) < 2 or not parts[-1].lower().endswith(".gguf"):
            return model_id
        parent_id = "/".join(parts[:-1])
        try:
            file, parent = self.resolve(model_id).path, self.resolve(parent_id).path
        except ModelNotFound:
            return model_id
        from cortex.neuron.models.gguf import find_gguf  # torch: only for GGUF ids

        chosen = find_gguf(parent)
        return parent_id if chosen is not None and chosen.resolve() == file.resolve() else model_id

    def download(self, model_id: str) -> ModelLocation:
        """Fetch `model_id` from the Hugging Face hub into the cache (blocking; run in a thread)."""
        parts = check_id(model_id)
        if not self.hub_download or len(parts) != 2:
            raise ModelNotFound(f"model {quoted(model_id)} not found", param="model")
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise ModelNotFound(
                f"model {quoted(model_id)} not found and huggingface_hub is not installed",
                param="model",
            ) from None
        try:
            path = snapshot_download(
                repo_id=model_id,
                cache_dir=str(hf_cache_dir()),
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*"],
            )
        except Exception as exc:  # network, auth, missing repo: all mean "not available"
            raise ModelNotFound(
                f"model {quoted(model_id)} could not be downloaded: {exc}"
            ) from None
        return ModelLocation(model_id, Path(path), "safetensors", "hub")

    def scan(self) -> list[ModelLocation]:
        """Every model found in the models dirs and the HF cache (first occurrence of an id)."""
        found: dict[str, ModelLocation] = {}
        for root in self.models_dirs:
            if root.is_dir():
                for rel, path in _walk(root, root, 0):
                    found.setdefault(
                        rel, ModelLocation(rel, path, model_format(path) or "", "models_dir")
                    )
        cache = hf_cache_dir()
        if cache.is_dir():
            for repo in sorted(cache.glob("models--*--*")):
                _, org, name = repo.name.split("--", 2)
                path = snapshot_dir(repo)
                if path is not None and (fmt := model_format(path)):
                    found.setdefault(
                        f"{org}/{name}", ModelLocation(f"{org}/{name}", path, fmt, "hf_cache")
                    )
        return list(found.values())


def _walk(root: Path, directory: Path, depth: int) -> list[tuple[str, Path]]:
    out = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return out
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if model_format(entry) and (entry.is_dir() or entry.suffix == ".gguf"):
            out.append((entry.relative_to(root).as_posix(), entry))
        elif entry.is_dir() and not entry.is_symlink() and depth + 1 < MAX_DEPTH:
            out.extend(_walk(root, entry, depth + 1))
    return out


def snapshot_dir(repo: Path) -> Path | None:
    """The snapshot a HF cache repo serves: `refs/main`, else the newest snapshot."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text(encoding="utf-8").strip()
        if candidate.is_dir():
            return candidate
    if not snapshots.is_dir():
        return None
    dirs = [d for d in snapshots.iterdir() if d.is_dir()]
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def describe(location: ModelLocation) -> dict[str, Any]:
    """`arch`, `params`, `bytes`, `max_context` for `/models` (None where unknown)."""
    info: dict[str, Any] = {"arch": None, "params": None, "bytes": None, "max_context": None}
    if location.format == "gguf":
        summary = gguf_summary(location.path)
        if summary:
            # What the weights will hold once loaded in bf16 (a GPU's and a bf16 CPU's compute
            # dtype): quantized layers near the file's size, the rest in bf16; the gateway
            # places the model by it.
            from cortex.neuron.models.loading import model_weight_bytes

            summary["file_bytes"] = summary["bytes"]
            summary["bytes"] = model_weight_bytes(location.path, "bfloat16")
        return info | summary
    try:
        config = json.loads((location.path / "config.json").read_text(encoding="utf-8"))
        from cortex.neuron.models.loading import model_weight_bytes

        info["arch"] = config.get("model_type")
        info["max_context"] = config.get("max_position_embeddings")
        info["bytes"] = model_weight_bytes(location.path)
        info["params"] = model_weight_bytes(location.path, "float32") // 4
    except Exception:  # a broken directory is still listed; loading it gives the real error
        pass
    return info


def gguf_summary(path: Path) -> dict[str, Any]:
    """`/models` details of a GGUF model (empty for an unreadable file: loading it says why)."""
    from cortex.neuron.models.gguf import gguf_info  # torch: imported only when listing GGUFs

    try:
        return gguf_info(path)
    except Exception:  # a broken file is still listed; loading it gives the real error
        return {}
