"""``napari-sam models``: list the known models and where their files are."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list known models and their cache status")
    p.set_defaults(func=run)


def run(args) -> int:
    from napari_sam.model.checkpoint import cache_dir
    from napari_sam.model.registry import DEFAULT_MODEL, REGISTRY

    folder = cache_dir()
    print(f"cache directory: {folder}  (set NAPARI_SAM_CACHE to change it)")
    for name, info in REGISTRY.items():
        if info.url is None:
            status = "bundled"
        else:
            status = "cached" if (folder / info.filename).is_file() else "not downloaded"
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:22s} {status:15s} {info.description}{default}")
    return 0
