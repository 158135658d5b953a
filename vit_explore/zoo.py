"""Load models: the embedded toy ViTs, any timm name, or a local checkpoint file.

The embedded models are safetensors files in ``vit_explore/weights``; their metadata
(strings) holds the timm architecture, its keyword arguments, the class names and the
data config as JSON, so :func:`load_model` rebuilds them offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import check_bool, check_int
from ._files import atomic_path
from .errors import InputError, UnsupportedModelError, WeightsError, suggest
from .zoo_hf import is_pretrained_folder  # imports no transformers

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
EMBEDDED_MODELS: tuple[str, ...] = ("toy-shapes", "toy-shapes-spurious")
"""Names of the models shipped inside the package."""

META_FORMAT = "vit_explore/1"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_STATE_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")



def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    pretrained: bool = True,
    arch: str | None = None,
    num_classes: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Return a ready model in eval mode.

    ``name_or_path`` is one of :data:`EMBEDDED_MODELS` (``pretrained=False`` gives the
    same architecture with random weights), a timm model name (``pretrained=True``
    needs the network or a filled cache), or a checkpoint file: ``.safetensors`` or
    ``.pth/.pt/.bin/.ckpt`` (loaded with ``weights_only=True``). A checkpoint needs
    ``arch=`` (a timm name) unless it was saved by :func:`save_model`. ``"hf:org/name"``
    or a folder written by ``save_pretrained`` loads a Hugging Face image classifier
    (``zoo_hf.py``; needs ``pip install 'vit-explore[hf]'``).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputError(
            f"load_model expects a model name or a file path, got {type(name_or_path).__name__}; "
            "pass an nn.Module directly to the explainers instead"
        )
    text = os.fspath(name_or_path)
    check_bool("pretrained", pretrained)
    if arch is not None and not isinstance(arch, str):
        raise InputError(f"arch must be a timm model name (a str), got {type(arch).__name__}")
    if num_classes is not None:
        check_int("num_classes", num_classes, 1)
    if text in EMBEDDED_MODELS:
        return _load_embedded(text, pretrained=pretrained)
    path = Path(text).expanduser()
    if text.startswith("hf:") or is_pretrained_folder(path):
        from .zoo_hf import load_hf

        return load_hf(text[3:] if text.startswith("hf:") else path)
    if _looks_like_path(text, path):
        return load_checkpoint(path, arch=arch, num_classes=num_classes, **timm_kwargs)
    return _load_timm(text, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)


def class_names(model: nn.Module) -> list[str]:
    """Human-readable class names of ``model`` (``"class i"`` when unknown; a Hugging Face
    model's ``config.id2label``)."""
    from .capture.hf import id2label

    hf_names = id2label(model)
    if hf_names is not None:
        return hf_names
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    n = _num_classes(model)
    if names and (n is None or len(names) == n):
        return [str(x) for x in names]
    if n in (1000, 11821, 21843):
        names = _imagenet_names(model)
        if names:
            return names
    return [f"class {i}" for i in range(n or 0)]


def _imagenet_names(model: nn.Module) -> list[str] | None:
    """ImageNet class descriptions from timm's bundled metadata, or None."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    try:
        subset = infer_imagenet_subset(model)
        return list(ImageNetInfo(subset).label_descriptions()) if subset else None
    except (OSError, ValueError, KeyError):  # metadata is a convenience only
        return None


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    model_kwargs: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and config as safetensors, atomically.

    The file is written to a temporary name in the same folder and moved into place
    with :func:`os.replace`, so a crash never leaves a half-written file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    meta = {
        "format": META_FORMAT,
        "arch": arch,
        "model_kwargs": json.dumps(dict(model_kwargs)),
        "class_names": json.dumps(list(cfg.get("label_names") or class_names(model))),
        "data_config": json.dumps(_jsonable(_data_config(cfg))),
        "extra": json.dumps(_jsonable(dict(extra or {}))),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded vit_explore metadata of a safetensors file ({} when absent)."""
    path = _existing(Path(path))
    raw = _safetensors_metadata(path)
    if raw.get("format") != META_FORMAT:
        return {}
    try:
        meta = {
            "arch": raw["arch"],
            "model_kwargs": json.loads(raw["model_kwargs"]),
            "class_names": json.loads(raw["class_names"]),
            "data_config": json.loads(raw["data_config"]),
            "extra": json.loads(raw.get("extra", "{}")),
        }
        kw, names = meta["model_kwargs"], meta["class_names"]
        if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
            raise ValueError("model_kwargs is not a JSON object")
        reserved = sorted(set(kw) & _RESERVED_KWARGS)
        if reserved:
            raise ValueError(f"model_kwargs sets {', '.join(reserved)}, which the loader decides")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("class_names is not a list of strings")
        if not isinstance(meta["data_config"], dict):
            raise ValueError("data_config is not a JSON object")  # noqa: TRY004 - reported as WeightsError
        return meta
    except (KeyError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise WeightsError(
            f"{path}: the vit_explore metadata is damaged ({exc}); re-export the file with "
            "vit_explore.zoo.save_model, or pass arch= to load the bare weights"
        ) from exc


_RESERVED_KWARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"})


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a timm model and load a local checkpoint into it strictly (eval mode)."""
    path = _existing(Path(path))
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        state = _read_safetensors(path)
    elif path.suffix in _TORCH_SUFFIXES:
        state = _read_torch(path)
    else:
        raise InputError(
            f"{path}: unknown checkpoint type {path.suffix!r}; use a .safetensors or "
            f"{'/'.join(_TORCH_SUFFIXES)} file"
        )
    if meta and arch is None:
        kwargs = {**meta["model_kwargs"], **timm_kwargs}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = _create(meta["arch"], pretrained=False, **kwargs)
        _load_state(model, state, path, meta["arch"])
        _set_cfg(model, meta["arch"], path.stem, meta["data_config"], meta["class_names"])
        return model.eval()
    if arch is None:
        raise InputError(
            f"{path}: the checkpoint does not say which architecture it holds; pass arch= "
            "with the timm model name it was trained as, e.g. "
            f"load_model({str(path)!r}, arch='vit_base_patch16_224')"
        )
    if num_classes is None and isinstance(state.get("head.weight"), torch.Tensor):
        num_classes = int(state["head.weight"].shape[0])
    kwargs = dict(timm_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = _create(arch, pretrained=False, **kwargs)
    _load_state(model, state, path, arch)
    return model.eval()


# --------------------------------------------------------------------------- helpers


def _looks_like_path(text: str, path: Path) -> bool:
    return (
        path.suffix in _TORCH_SUFFIXES + (".safetensors",)
        or path.exists()
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
    )


def _existing(path: Path) -> Path:
    if not path.is_file():
        what = ("is a folder, not a file" if path.is_dir() else
                "is not a regular file (a FIFO, socket or device); give the checkpoint file itself"
                if path.exists() else "does not exist")
        raise WeightsError(f"checkpoint {str(path)!r} {what}; check the path (relative to {os.getcwd()})")
    return path


def _load_embedded(name: str, *, pretrained: bool) -> nn.Module:
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"the embedded weights {path} are missing from this installation; reinstall "
            f"vit_explore, or rebuild them with: python -m vit_explore.train_toy --name {name}"
        )
    meta = read_metadata(path)
    if not meta:
        raise WeightsError(f"{path} carries no vit_explore metadata; rebuild it with "
                           f"python -m vit_explore.train_toy --name {name}")
    model = _create(meta["arch"], pretrained=False, **meta["model_kwargs"])
    if pretrained:
        _load_state(model, _read_safetensors(path), path, meta["arch"])
    _set_cfg(model, meta["arch"], name, meta["data_config"], meta["class_names"])
    return model.eval()


def _suggest_model(name: str) -> str:
    """``"; did you mean 'a', 'b'?"``: the nearest embedded or timm ViT names first (what this
    package explains), the nearest other timm names only when no ViT is close."""
    import difflib

    import timm

    vits = list(EMBEDDED_MODELS) + timm.list_models("vit_*") + timm.list_models("deit*")
    close = difflib.get_close_matches(name, vits, n=3, cutoff=0.5)
    close = close or difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _load_timm(name: str, *, pretrained: bool, num_classes: int | None, **kwargs: Any) -> nn.Module:
    import timm

    if not (timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))):
        raise UnsupportedModelError(
            f"{name!r} is neither an embedded model {list(EMBEDDED_MODELS)}, a timm model "
            f"name nor an existing file{_suggest_model(name)}"
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # network/hub errors come in many types
        if not pretrained:
            raise
        raise WeightsError(
            f"timm could not fetch the pretrained weights of {name!r} ({type(exc).__name__}: "
            f"{exc}); this machine may be offline. Fixes: run once with network access so "
            "the weights are cached (see HF_HOME), download the checkpoint elsewhere and "
            f"call load_model(path, arch={name.split('.')[0]!r}), or use pretrained=False, "
            "or the embedded 'toy-shapes' model"
        ) from exc
    return model.eval()


def _create(arch: str, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        raise UnsupportedModelError(f"unknown timm architecture {arch!r}{suggest(arch, timm.list_models())}")
    try:
        return timm.create_model(arch, **kwargs)
    except TypeError as exc:
        raise InputError(f"timm rejected the arguments for {arch!r}: {exc}") from exc


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # SafetensorError and friends
        raise _corrupt(path, exc, "safetensors") from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # any reader error means an unreadable file
        raise _corrupt(path, exc, "safetensors") from exc


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError ...
        raise _corrupt(path, exc, "PyTorch") from exc
    for _ in range(2):  # unwrap {"state_dict": {...}} style checkpoints
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path} does not hold a state dict of tensors (found {type(obj).__name__}); "
            "save it with torch.save(model.state_dict(), path)"
        )
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _corrupt(path: Path, exc: Exception, kind: str) -> WeightsError:
    return WeightsError(
        f"cannot read {path} as a {kind} checkpoint ({type(exc).__name__}: {exc}); the file "
        "is corrupt, truncated or of another format. Re-download or re-export it"
    )


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise WeightsError(
            f"{path} does not fit {arch!r}: {str(exc).splitlines()[-1].strip()}; pass the arch= "
            "(and num_classes=/img_size= ...) the checkpoint was trained with"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{path} does not fit {arch!r}: missing keys {_few(result.missing_keys)}, unexpected "
            f"keys {_few(result.unexpected_keys)}; pass the arch= (and model options) the "
            "checkpoint was trained with"
        )


def _few(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def _data_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return {k: cfg[k] for k in keys if k in cfg}


def _set_cfg(model: nn.Module, arch: str, tag: str, data_config: Mapping[str, Any], names: list[str]) -> None:
    """Replace ``model.pretrained_cfg`` so timm's resolve_data_config sees our values."""
    cfg = {
        "architecture": arch,
        "tag": tag,
        "input_size": tuple(data_config["input_size"]),
        "fixed_input_size": True,
        "interpolation": data_config.get("interpolation", "bilinear"),
        "crop_pct": float(data_config.get("crop_pct", 1.0)),
        "crop_mode": data_config.get("crop_mode", "center"),
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
        "num_classes": len(names),
        "label_names": list(names),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
    }
    model.pretrained_cfg = cfg  # type: ignore[assignment]  # torch's stubs type Module attributes as Tensor | Module


def _num_classes(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("num_classes")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
