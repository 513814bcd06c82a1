"""The POSE_KEYPOINT format (OpenPose JSON, as comfyui_controlnet_aux emits it) and its validation.

A *frame* is one image's poses::

    {"people": [{"pose_keypoints_2d": [x, y, c] * 18,          # COCO-18 body, required
                 "hand_left_keypoints_2d": [x, y, c] * 21,     # or None / [] when absent
                 "hand_right_keypoints_2d": [x, y, c] * 21,    # or None / []
                 "face_keypoints_2d": [x, y, c] * 70}],        # or None / [] (68 points accepted)
     "canvas_height": H, "canvas_width": W}

POSE_KEYPOINT itself is a list of frames, one per image of a batch. See README.md for the
coordinate rule (normalised vs pixel) and what counts as a missing keypoint.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from ..common import AnnotatorInputError

BODY_KEYPOINTS = 18
HAND_KEYPOINTS = 21
FACE_KEYPOINTS = (70, 68)  # OpenPose face model: 68 landmarks + 2 pupils; 68-point sets are common too

PERSON_FIELDS = {
    "pose_keypoints_2d": (BODY_KEYPOINTS,),
    "hand_left_keypoints_2d": (HAND_KEYPOINTS,),
    "hand_right_keypoints_2d": (HAND_KEYPOINTS,),
    "face_keypoints_2d": FACE_KEYPOINTS,
}

# Coordinates at most this far above 1.0 still count as normalised (float noise from editors).
NORMALISED_TOLERANCE = 1e-3
# A canvas side beyond this is certainly a corrupted file (and would allocate gigabytes).
MAX_CANVAS_SIDE = 16384


def _fail(where: str, expected: str, found: Any) -> AnnotatorInputError:
    if isinstance(found, str):
        shown = found
    else:
        shown = repr(found)
        if len(shown) > 80:
            shown = shown[:77] + "..."
    return AnnotatorInputError(f"pose keypoints: {where}: expected {expected}, found {shown}")


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:6]}"
    return f"{type(value).__name__} {value!r}"[:80]


def _validate_keypoint_list(values: Any, counts: tuple[int, ...], where: str) -> list[float] | None:
    if values is None or (isinstance(values, (list, tuple)) and len(values) == 0):
        return None
    if not isinstance(values, (list, tuple)):
        raise _fail(where, "a flat list [x, y, confidence, ...] or null", _describe(values))
    allowed = " or ".join(f"{count * 3} numbers ({count} keypoints × [x, y, confidence])" for count in counts)
    if len(values) not in {count * 3 for count in counts}:
        hint = ""
        if where.endswith("pose_keypoints_2d") and len(values) == 75:
            hint = " (that is OpenPose BODY_25; only the COCO-18 layout is supported)"
        elif values and isinstance(values[0], (list, tuple)):
            hint = " (nested [x, y, c] triples; flatten them into one list)"
        raise _fail(where, allowed, f"{len(values)} value(s){hint}")
    cleaned: list[float] = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(f"{where}[{index}]", "a number", _describe(value))
        number = float(value)
        if not math.isfinite(number):
            raise _fail(f"{where}[{index}]", "a finite number", repr(value))
        cleaned.append(number)
    return cleaned


def _validate_canvas_side(frame: dict, key: str, where: str) -> int:
    if key not in frame:
        raise _fail(where, f"a '{key}' entry (the pose canvas size in pixels)", f"keys {sorted(frame)}")
    value = frame[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise _fail(f"{where}.{key}", "a positive integer", _describe(value))
    if float(value) != int(value) or not 1 <= int(value) <= MAX_CANVAS_SIDE:
        raise _fail(f"{where}.{key}", f"a positive integer of at most {MAX_CANVAS_SIDE}", repr(value))
    return int(value)


def validate_frame(frame: Any, where: str = "frame") -> dict:
    """Return a clean copy of one frame (floats, ``None`` for absent parts); raise on anything malformed."""
    if not isinstance(frame, dict):
        raise _fail(where, "an object with 'people', 'canvas_height' and 'canvas_width'", _describe(frame))
    if "people" not in frame:
        raise _fail(where, "a 'people' list", f"keys {sorted(frame)}")
    people = frame["people"]
    if not isinstance(people, (list, tuple)):
        raise _fail(f"{where}.people", "a list of people", _describe(people))
    height = _validate_canvas_side(frame, "canvas_height", where)
    width = _validate_canvas_side(frame, "canvas_width", where)
    clean_people = []
    for person_index, person in enumerate(people):
        person_where = f"{where}.people[{person_index}]"
        if not isinstance(person, dict):
            raise _fail(person_where, "an object with 'pose_keypoints_2d'", _describe(person))
        if not any(key in person for key in PERSON_FIELDS):
            raise _fail(person_where, f"at least one of {list(PERSON_FIELDS)}", f"keys {sorted(person)}")
        clean_people.append(
            {
                key: _validate_keypoint_list(person.get(key), counts, f"{person_where}.{key}")
                for key, counts in PERSON_FIELDS.items()
            }
        )
    return {"people": clean_people, "canvas_height": height, "canvas_width": width}


def parse_pose_keypoints(json_text_or_obj: Any) -> list[dict]:
    """Parse POSE_KEYPOINT data into a list of validated frames.

    Accepts JSON text (str/bytes) or already-decoded objects: a list of frames (POSE_KEYPOINT)
    or a single frame. Unknown extra keys are ignored. Raises :class:`AnnotatorInputError` naming the
    exact place (``frames[1].people[0].pose_keypoints_2d``) and what was expected and found.
    """
    data = json_text_or_obj
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnnotatorInputError(f"pose keypoints: expected UTF-8 JSON text, found undecodable bytes ({exc})") from exc
    if isinstance(data, str):
        if not data.strip():
            raise AnnotatorInputError("pose keypoints: expected JSON text, found an empty string")
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise AnnotatorInputError(
                f"pose keypoints: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from exc
    if isinstance(data, dict):
        return [validate_frame(data, "frame")]
    if isinstance(data, (list, tuple)):
        if not data:
            raise AnnotatorInputError("pose keypoints: expected at least one frame, found an empty list")
        return [validate_frame(frame, f"frames[{index}]") for index, frame in enumerate(data)]
    raise _fail("top level", "a frame object or a list of frames", _describe(data))


def keypoint_triples(values: Sequence[float] | None) -> list[tuple[float, float, float]]:
    if not values:
        return []
    return [(values[index], values[index + 1], values[index + 2]) for index in range(0, len(values), 3)]


def is_present(x: float, y: float, confidence: float) -> bool:
    """A keypoint is drawn when its confidence is positive and it is not flagged by a negative coordinate.

    comfyui_controlnet_aux writes undetected hand points as ``(-1/W, -1/H, 1.0)``, and OpenPose
    writes undetected points as ``(0, 0, 0)``; both are treated as missing.
    """
    return confidence > 0 and x >= 0 and y >= 0


def frame_is_normalised(frame: dict) -> bool:
    """Coordinate rule: a frame is normalised when every present keypoint lies within [0, 1].

    Decided once per frame (all people and parts together), so a frame is never half scaled.
    A pixel-coordinate pose only fits in [0, 1] if it is drawn inside a single pixel, which no
    real pose is; a frame without any present keypoint draws nothing either way.
    """
    limit = 1.0 + NORMALISED_TOLERANCE
    for person in frame["people"]:
        for key in PERSON_FIELDS:
            for x, y, confidence in keypoint_triples(person.get(key)):
                if is_present(x, y, confidence) and (x > limit or y > limit):
                    return False
    return True


def to_pixel_points(values: Sequence[float] | None, frame: dict, normalised: bool) -> list[tuple[float, float] | None]:
    """Keypoints as pixel positions (x, y) in the canvas, ``None`` where missing."""
    scale_x = frame["canvas_width"] if normalised else 1.0
    scale_y = frame["canvas_height"] if normalised else 1.0
    return [
        (x * scale_x, y * scale_y) if is_present(x, y, confidence) else None
        for x, y, confidence in keypoint_triples(values)
    ]


def encode_keypoints(points: Sequence[tuple[float, float] | None], width: int, height: int) -> list[float]:
    """Pixel points → normalised flat list as comfyui_controlnet_aux writes it (missing = 0, 0, 0)."""
    flat: list[float] = []
    for point in points:
        if point is None:
            flat += [0.0, 0.0, 0.0]
        else:
            flat += [float(point[0]) / width, float(point[1]) / height, 1.0]
    return flat
