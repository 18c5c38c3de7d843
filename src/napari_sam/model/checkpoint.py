"""Find, download, verify and load checkpoints.

``load_model("vit_b")`` downloads (once, hash-verified, through pooch) into the
cache directory, ``$NAPARI_SAM_CACHE`` or the user cache dir; ``load_model(path)``
loads a local file. The architecture is inferred from the state dict, so SAM,
micro-sam (``model_state`` wrapper, ``sam.`` key prefix) and this project's own
checkpoints all load with ``strict=True``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from napari_sam.model.registry import ModelInfo, get_model_info
from napari_sam.model.sam import Sam, SamConfig, build_sam

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(bytes_done, bytes_total)``; ``bytes_total`` is 0 if unknown."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, downloaded, verified or loaded."""


def cache_dir() -> Path:
    """Directory for downloaded checkpoints (``$NAPARI_SAM_CACHE`` overrides the default)."""
    env = os.environ.get("NAPARI_SAM_CACHE")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam-stack"))


class _PoochProgress:
    """The tqdm-like object pooch's HTTPDownloader drives, forwarding to a callback."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self.total = 0
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n
        self.callback(self.n, self.total or 0)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        self.callback(self.n, self.total or self.n)


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint of registry model ``name`` is (or will be) cached."""
    return cache_dir() / get_model_info(name).filename


def fetch_checkpoint(name: str, progress: ProgressCallback | None = None) -> Path:
    """Path of registry model ``name``'s checkpoint, downloading it if needed.

    The download goes to a temporary file and is moved into place only once
    its hash matches, so a failed or interrupted download leaves nothing behind.

    Raises
    ------
    CheckpointError
        If the download fails (names the URL, the expected path and how to place
        the file by hand) or the hash does not match.
    """
    info = get_model_info(name)
    target = cache_dir() / info.filename
    if info.url is None:
        raise CheckpointError(f"model {name!r} has no download address")
    import pooch

    downloader = pooch.HTTPDownloader(
        progressbar=_PoochProgress(progress) if progress else False, timeout=60
    )
    try:
        path = pooch.retrieve(
            info.url,
            known_hash=info.known_hash,
            fname=info.filename,
            path=target.parent,
            downloader=downloader,
        )
    except ValueError as err:  # pooch: hash mismatch
        raise CheckpointError(
            f"the file downloaded from {info.url} failed verification ({err}). It was not "
            f"kept. Try again, or download it yourself and place it at {target}."
        ) from err
    except Exception as err:
        raise CheckpointError(_manual_instructions(info, target, err)) from err
    return Path(path)


def _manual_instructions(info: ModelInfo, target: Path, err: BaseException) -> str:
    return (
        f"could not download model {info.name!r} from {info.url} "
        f"({type(err).__name__}: {err}).\n"
        f"If this machine is offline, download the file on another machine and place it at\n"
        f"    {target}\n"
        f"(set NAPARI_SAM_CACHE to use another folder), or pass the file's path instead of "
        f"the name {info.name!r}."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a plain SAM state dict (no model built).

    Accepts official SAM checkpoints, micro-sam's (``model_state`` wrapper and
    ``sam.`` prefix), MobileSAM's and this project's.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(err).__name__}: {err}). "
            "The file may be truncated or corrupt: delete it and download it again."
        ) from err
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the SAM state dict inside a loaded checkpoint object and strip prefixes."""
    if isinstance(obj, Mapping):
        for key in ("model_state", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (found {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("sam.", "module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    if not any(k.startswith("image_encoder.") for k in state):
        raise CheckpointError(
            f"{source} does not look like a SAM checkpoint: no 'image_encoder.*' weights"
        )
    return state


def infer_config(state: Mapping[str, torch.Tensor]) -> SamConfig:
    """The :class:`SamConfig` whose model has exactly these weights.

    Each encoder module in :data:`napari_sam.model.sam.ENCODERS` is asked in turn.
    """
    import importlib

    from napari_sam.model.sam import ENCODERS

    for target in ENCODERS.values():
        name = target.split(":")[0]
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # an encoder not installed in this build
            if err.name != name:
                raise
            continue
        config = module.infer_config(state)
        if config is not None:
            return config
    raise CheckpointError(
        "the checkpoint's image encoder is not one this package knows "
        f"({', '.join(ENCODERS)}); first keys: {list(state)[:3]}"
    )


def count_indices(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def decoder_fields(state: Mapping[str, torch.Tensor]) -> dict:
    dim = state["mask_decoder.iou_token.weight"].shape[1]
    return {
        "prompt_embed_dim": dim,
        "mask_in_chans": state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        "decoder_depth": count_indices(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        "decoder_mlp_dim": state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        "decoder_heads": 8 if dim >= 256 else max(1, dim // 16),
        "iou_head_depth": count_indices(
            state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."
        ),
        "iou_head_hidden_dim": state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        "num_multimask_outputs": state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
    }


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_from_state_dict(
    state: Mapping[str, torch.Tensor], expected_architecture: str | None = None
) -> Sam:
    """Build the model that ``state`` belongs to and load it strictly."""
    config = infer_config(state)
    if expected_architecture is not None:
        from napari_sam.model.sam import CONFIGS

        expected = CONFIGS.get(expected_architecture)
        if expected is not None and expected != config:
            raise CheckpointError(
                f"the checkpoint holds a {_describe(config)} model, but {expected_architecture!r}"
                f" is a {_describe(expected)} model: is it the checkpoint of another model?"
            )
    model = build_sam(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint does not match its inferred architecture: {err}"
        ) from err
    return model


def _describe(config: SamConfig) -> str:
    o = config.encoder_options
    width = o.get("embed_dim", o.get("embed_dims"))
    depth = o.get("depth", o.get("depths"))
    return f"{config.encoder} (width {width}, depth {depth})"


def load_model(
    name_or_path: str | os.PathLike = "micro",
    device: str | torch.device = "auto",
    *,
    progress: ProgressCallback | None = None,
) -> Sam:
    """Load a SAM model by registry name or checkpoint path, in eval mode on ``device``.

    Parameters
    ----------
    name_or_path : a name from :func:`napari_sam.available_models` (downloaded
        once into :func:`cache_dir`) or the path of a checkpoint file
    device : ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``
    progress : ``callback(bytes_done, bytes_total)`` during a download

    Raises
    ------
    CheckpointError
        Download failure, corrupt file, or weights of another architecture.
    KeyError
        Unknown model name (the message lists the known ones).
    """
    text = os.fspath(name_or_path)
    if os.path.exists(text):
        state, expected = read_state_dict(text), None
    else:
        if os.sep in text or text.endswith((".pt", ".pth")):
            raise CheckpointError(f"checkpoint file not found: {text}")
        info = get_model_info(text)
        from napari_sam.model.bundled import is_bundled, read_bundled_state_dict

        if is_bundled(info.name):
            state = read_bundled_state_dict(info.name)
        else:
            state = read_state_dict(fetch_checkpoint(info.name, progress))
        expected = None if info.architecture == "infer" else info.architecture
    model = model_from_state_dict(state, expected)
    return model.to(resolve_device(device))
