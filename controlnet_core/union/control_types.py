"""The Union control types: ids as the released model was trained on them, and the names entries use.

Ids from xinsir's README (0-5) and the ProMax test scripts (6 tile, 7 repaint); the canonical names
are the host's (comfy/cldm/control_types.py), so a workflow's choice means the same in both.
"""
from __future__ import annotations

from ..errors import ControlNetError, InputError

CONTROL_TYPES: dict[str, int] = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}

# Single annotator names (and a few common spellings) for the same ids.
ALIASES: dict[str, int] = {
    "pose": 0, "dwpose": 0,
    "hed": 2, "pidi": 2, "pidinet": 2, "scribble": 2, "ted": 2, "softedge": 2, "soft edge": 2,
    "canny": 3, "lineart": 3, "anime lineart": 3, "anime_lineart": 3, "lineart_anime": 3, "mlsd": 3,
    "normalbae": 4, "seg": 5, "segmentation": 5, "inpaint": 7, "outpaint": 7,
}

TYPE_NAMES: tuple[str, ...] = tuple(CONTROL_TYPES)


def control_type_id(control_type: str | int, num_types: int, model: str = "this Union ControlNet") -> int:
    """The id of a control type given by name (canonical, alias) or id; refuses what `model`
    (with `num_types` types) was not trained on."""
    if isinstance(control_type, bool) or not isinstance(control_type, (str, int)):
        raise InputError(f"Union control type: expected a name ({', '.join(TYPE_NAMES)}) or an id, "
                         f"found {control_type!r}")
    if isinstance(control_type, int):
        type_id = control_type
    else:
        key = control_type.strip().lower()
        type_id = CONTROL_TYPES.get(key, ALIASES.get(key))
        if type_id is None:
            raise InputError(f"Union control type {control_type!r} is unknown: expected one of "
                             f"{', '.join(TYPE_NAMES)} (or a single name such as canny, scribble, lineart)")
    if not 0 <= type_id < len(TYPE_NAMES):
        raise InputError(f"Union control type id {type_id}: expected 0 … {len(TYPE_NAMES) - 1}")
    if type_id >= num_types:
        raise ControlNetError(f"{model} knows {num_types} control types; {TYPE_NAMES[type_id]!r} (id {type_id}) "
                              "needs the 8-type ProMax file (diffusion_pytorch_model_promax.safetensors from "
                              "xinsir/controlnet-union-sdxl-1.0)")
    return type_id
