"""Loading Hugging Face image classifiers: ``vx.load_model("hf:org/name")`` and folders written by
``save_pretrained`` (``transformers`` is imported only here, only when such a model is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .errors import WeightsError


def is_pretrained_folder(path: Path) -> bool:
    """A folder written by ``save_pretrained`` (a ``config.json`` beside the weights)."""
    return path.is_dir() and (path / "config.json").is_file()


def load_hf(name_or_dir: str | os.PathLike[str]) -> nn.Module:
    """``AutoModelForImageClassification.from_pretrained(name_or_dir)`` in eval mode.

    Raises:
        WeightsError: ``transformers`` is not installed, or the model is neither in the
            Hugging Face cache nor reachable (the message names the cache folder).
    """
    try:
        import transformers
        from huggingface_hub import constants
    except ImportError:
        raise WeightsError(
            "Hugging Face models need transformers: pip install 'vit-explore[hf]'"
        ) from None
    name = os.fspath(name_or_dir)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "folder" if Path(name).exists() else "model"
        raise WeightsError(
            f"could not load the Hugging Face {where} {name!r}: {str(e).splitlines()[0] if str(e) else e!r}. "
            f"A hub name needs the network or a filled cache ({constants.HF_HUB_CACHE}; HF_HUB_OFFLINE="
            f"{int(bool(constants.HF_HUB_OFFLINE))}); a local folder must be written by save_pretrained."
        ) from None
    return model.eval()
