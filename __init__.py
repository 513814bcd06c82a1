"""ControlNet pack for ComfyUI.

The host imports this folder as a package named after whatever folder it was cloned into, so
everything below uses relative imports. Outside ComfyUI (tests, the command-line tools) the node
layer cannot load; the mappings are then empty and `HOST_UNAVAILABLE_REASON` says why.
"""
from __future__ import annotations

# Modules that only exist inside a ComfyUI process.
_HOST_MODULES = ("comfy", "folder_paths", "comfy_extras", "server", "node_helpers", "latent_preview")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
HOST_UNAVAILABLE_REASON: str | None = None
WEB_DIRECTORY = "./web"

if not __package__:
    # Imported as a lone module rather than as a package: pytest does this with the root
    # __init__.py when the clone folder's name is not a Python identifier (e.g. "controlnet-pack").
    HOST_UNAVAILABLE_REASON = "imported as a plain module, not as a package, so no nodes are registered."
else:
    try:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in _HOST_MODULES:
            raise  # a real bug in the pack: never hide it behind "no host"
        HOST_UNAVAILABLE_REASON = (
            f"ComfyUI is not importable here (no module {exc.name!r}), so no nodes are registered. "
            "controlnet_core and annotators work without it."
        )

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
