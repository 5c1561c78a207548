"""Where an encoder's pretrained weights come from, decided before anything heavy loads.

A model is a local folder with ``config.json`` and ``*.safetensors`` (or ``*.bin``) weights. It is
found, in this order: the folder the user gives; ``model_id`` itself when it names a folder; the
Hugging Face cache; the model hub (downloaded into that cache, unless ``HF_HUB_OFFLINE`` or
``TRANSFORMERS_OFFLINE`` is set). When none has it, :func:`locate` says why, and the stage raises
:class:`WeightsUnavailableError` with one line that says how to provide the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mmlens.errors import UserError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
# What a download fetches: configs, tokenizer files and safetensors weights (never TF, Flax, ONNX).
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
HUB_FALLBACK_PATTERNS = ["pytorch_model*.bin"]  # repositories without safetensors
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class WeightsUnavailableError(UserError, FileNotFoundError):
    """Pretrained weights that a real run needs are nowhere to be found; the message says how
    to provide them."""


@dataclass(frozen=True)
class Located:
    """The outcome of :func:`locate`: a model folder and where it came from, or why not."""

    folder: Path | None
    origin: str  # "folder", "cache", "hub"; or, without a folder, the reason


def hub_offline() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in OFFLINE_VARIABLES)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder, sorted (several for sharded checkpoints)."""
    return [p for pattern in WEIGHT_PATTERNS for p in sorted(Path(folder).glob(pattern))]


def is_model_folder(folder: Path) -> bool:
    return (Path(folder) / "config.json").is_file() and bool(weight_files(folder))


def check_folder(folder: str | Path, what: str) -> Path:
    """``folder`` as a model folder, or the one-line error naming what it lacks."""
    path = Path(folder).expanduser()
    if not is_model_folder(path):
        raise WeightsUnavailableError(
            f"{what}: {path} is not a model folder (it needs config.json and model.safetensors or "
            "pytorch_model.bin, as written by save_pretrained or snapshot_download)")
    return path


def locate(model_id: str, folder: str | Path | None = None, *, what: str = "model") -> Located:
    """Find the model ``model_id``: ``folder``, ``model_id`` as a folder, the cache, the hub."""
    if folder is not None:
        return Located(check_folder(folder, what), "folder")
    if Path(model_id).expanduser().is_dir():
        return Located(check_folder(model_id, what), "folder")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        path = Path(snapshot_download(model_id, allow_patterns=HUB_PATTERNS,
                                      local_files_only=True))
        if is_model_folder(path):
            return Located(path, "cache")
    except _hub_errors():
        pass
    if offline:
        return Located(None, "not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        path = Path(snapshot_download(model_id, allow_patterns=HUB_PATTERNS))
        if not weight_files(path):
            path = Path(snapshot_download(model_id, allow_patterns=HUB_FALLBACK_PATTERNS))
    except _hub_errors() as exc:
        return Located(None, f"not in the Hugging Face cache and the model hub did not give it "
                             f"({type(exc).__name__})")
    if not is_model_folder(path):
        return Located(None, "the model hub has no config.json with PyTorch weights for it")
    return Located(path, "hub")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises for a model it cannot find or fetch (names vary by version)."""
    from huggingface_hub import utils

    names = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError",
             "HFValidationError", "EntryNotFoundError")
    return (OSError, ValueError, *(getattr(utils, n) for n in names if hasattr(utils, n)))


def unavailable(what: str, model_id: str, reason: str, option: str, *,
                files: str = "config.json and model.safetensors",
                also: str = "") -> WeightsUnavailableError:
    """The one-line error of a real run without weights: what is missing, why, how to fix it."""
    return WeightsUnavailableError(
        f"{what}: no pretrained weights for {model_id} ({reason}). Provide them: run once with "
        f"the model hub reachable (HF_HUB_OFFLINE unset; they stay in the Hugging Face cache "
        f"under HF_HOME for later offline runs), or pass {option}=<folder with "
        f"{files}> (CLI: -o {option}=<folder>; to fill the folder on a machine online: "
        f"huggingface_hub.snapshot_download({model_id!r}, local_dir=<folder>)){also}")
