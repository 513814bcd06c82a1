"""Every annotator by name: how to run it, its parameters (defaults, ranges, help) and weight files.

The command line (``python -m annotators``) and the ComfyUI nodes are both built from this table,
so a parameter is declared once. Annotator modules are imported only when first run: listing the
table never imports the neural models.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .common import AnnotatorInputError
from .common.image import MAX_DETECTION_SIDE, check_detection_size

# Photos and a pose bundled with the pack (sources and licences in samples/README.md).
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

# What the primary input of an annotator is.
INPUT_IMAGE = "image"  # a photo: B×H×W×C uint8 or float [0, 1]
INPUT_DEPTH = "depth"  # a depth map, near = bright
INPUT_LABELS = "labels"  # a class-index map
INPUT_POSE = "pose_keypoints"  # POSE_KEYPOINT frames (OpenPose JSON)

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ParamSpec:
    """One annotator parameter. ``kind`` is ``int``, ``float``, ``bool`` or ``choice``."""

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    # Added after the annotator's node shipped: the node lists it under its optional inputs, after
    # the others, so workflows saved before keep their widget values in place.
    added_later: bool = False

    def validate(self, value: Any) -> Any:
        """Coerce ``value`` to this parameter's type and check its range; raise AnnotatorInputError."""
        if self.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.strip().lower() in ("1", "true", "yes", "on")
            if isinstance(value, (int, np.integer)) and value in (0, 1):
                return bool(value)
            raise AnnotatorInputError(f"{self.name}: expected true or false, found {value!r}")
        if self.kind == "choice":
            text = str(value)
            if text not in self.choices:
                raise AnnotatorInputError(f"{self.name}: expected one of {list(self.choices)}, found {value!r}")
            return text
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise AnnotatorInputError(f"{self.name}: expected a number, found {value!r}") from None
        if not np.isfinite(number):
            raise AnnotatorInputError(f"{self.name}: expected a finite number, found {value!r}")
        if self.kind == "int":
            if number != int(number):
                raise AnnotatorInputError(f"{self.name}: expected a whole number, found {value!r}")
            number = int(number)
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            raise AnnotatorInputError(
                f"{self.name}: expected a value in [{self.minimum}, {self.maximum}], found {value!r}"
            )
        return number


@dataclass(frozen=True)
class WeightFile:
    """A weight file a neural annotator needs, looked up in the annotator models folder."""

    file_name: str
    source: str  # where the published file can be downloaded by hand


@dataclass(frozen=True)
class AnnotatorSpec:
    """How to run one annotator and what it takes."""

    name: str
    display_name: str
    description: str
    target: str  # "module:function" inside this package, imported on first use
    params: tuple[ParamSpec, ...] = ()
    input_kind: str = INPUT_IMAGE
    default_resolution: int | None = 512  # None: works at the input's own size
    needs_mask: bool = False
    weights: tuple[WeightFile, ...] = ()
    outputs_pose: bool = False
    sample: str = "astronaut.png"  # bundled sample the CLI uses when no input is given
    requires: tuple[str, ...] = ()  # optional Python packages only this annotator needs
    batch_chunk: int = 16  # frames per call: bounds memory and paces the progress bar
    preset: tuple[tuple[str, Any], ...] = ()  # keyword arguments this id fixes (e.g. scribble=True); not settable
    alias_of: str | None = None  # the id this one is another name for (it shares that id's node)

    @property
    def uses_resolution(self) -> bool:
        return self.default_resolution is not None

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise AnnotatorInputError(
            f"{self.name}: unknown parameter {name!r}; expected one of {[p.name for p in self.params]}"
        )

    def resolve_params(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``values``, each validated against its spec."""
        values = dict(values or {})
        resolved = {spec.name: spec.default for spec in self.params}
        for name, value in values.items():
            resolved[name] = self.param(name).validate(value)
        return resolved

    def load(self) -> Callable[..., Any]:
        module_name, function_name = self.target.split(":")
        module = importlib.import_module(f".{module_name}", __package__)
        return getattr(module, function_name)


@dataclass
class AnnotatorResult:
    """``images``: ``B×H×W×3`` uint8 control maps (float32 for inpaint, where masked pixels are −1).
    ``pose_keypoints``: one POSE_KEYPOINT frame dict per image, for pose annotators."""

    images: np.ndarray
    pose_keypoints: list[dict] | None = None

    def as_float(self) -> np.ndarray:
        """The maps as float32 (uint8 / 255), ready for a ComfyUI IMAGE tensor."""
        if self.images.dtype == np.uint8:
            return self.images.astype(np.float32) / 255.0
        return self.images.astype(np.float32)


def _int(name: str, default: int, low: int, high: int, help: str, step: int = 1) -> ParamSpec:
    return ParamSpec(name, "int", default, help, low, high, step)


def _float(name: str, default: float, low: float, high: float, help: str, step: float = 0.1) -> ParamSpec:
    return ParamSpec(name, "float", default, help, low, high, step)


def _bool(name: str, default: bool, help: str) -> ParamSpec:
    return ParamSpec(name, "bool", default, help)


def _choice(name: str, choices: Sequence[str], default: str, help: str, *, added_later: bool = False) -> ParamSpec:
    return ParamSpec(name, "choice", default, help, choices=tuple(choices), added_later=added_later)


_LLLYASVIEL = "https://huggingface.co/lllyasviel/Annotators"
_SAFE_EDGES = _bool("safe", False, "Quantise the edges to three levels ('safe' mode: faint edges that leak detail are dropped).")

_SPECS: tuple[AnnotatorSpec, ...] = (
    AnnotatorSpec(
        "canny", "Canny edges", "Canny edge map (white edges on black).", "canny:canny",
        (
            _int("low_threshold", 100, 0, 255, "Gradient strength below which a pixel is never an edge."),
            _int("high_threshold", 200, 0, 255, "Gradient strength above which a pixel is surely an edge."),
            _bool("l2_gradient", False, "Use the exact L2 gradient magnitude instead of |dx|+|dy|."),
        ),
    ),
    AnnotatorSpec(
        "lines", "Straight lines", "Straight line segments (for architecture), like M-LSD maps.", "lines:lines",
        (
            _choice("method", ("lsd", "hough"), "lsd", "lsd: OpenCV line segment detector; hough: Canny + probabilistic Hough."),
            _float("min_length", 20.0, 0.0, 4096.0, "Drop segments shorter than this (pixels at detection resolution).", 1.0),
            _int("thickness", 1, 1, 16, "Drawn line width in pixels at detection resolution."),
            _int("hough_threshold", 50, 1, 1000, "hough only: votes a line needs."),
            _float("max_gap", 5.0, 0.0, 1000.0, "hough only: largest gap (pixels) bridged within one segment.", 1.0),
        ),
        sample="coffee.png",
    ),
    AnnotatorSpec(
        "scribble", "Scribble", "Scribble-style strokes from a photo (XDoG) or a drawing (threshold).", "scribble:scribble",
        (
            _choice("method", ("xdog", "threshold"), "xdog", "xdog: difference of Gaussians; threshold: dark ink on light paper."),
            _int("threshold", 16, 0, 255, "xdog: edge contrast needed; threshold: gray level below which a pixel is ink."),
            _int("stroke_width", 1, 1, 16, "Thicken strokes to this width (1 = as detected)."),
        ),
    ),
    AnnotatorSpec(
        "lineart_standard", "Line art (standard)", "Line art from blur contrast, no network.", "lineart_standard:lineart_standard",
        (
            _float("gaussian_sigma", 6.0, 0.0, 100.0, "Blur radius (sigma, pixels) the image is compared with."),
            _int("intensity_threshold", 8, 0, 255, "Line strength counted when normalising contrast."),
        ),
    ),
    AnnotatorSpec(
        "binary", "Binary", "Two-level map by a gray threshold (0 = Otsu's automatic threshold).", "binary:binary",
        (
            _int("threshold", 0, 0, 255, "Gray level splitting black from white; 0 picks Otsu's threshold per frame."),
            _bool("invert", True, "Dark pixels become white (the original ControlNet convention)."),
        ),
    ),
    AnnotatorSpec(
        "tile", "Tile", "Detail removed by shrinking and enlarging, for the tile ControlNet.", "tile:tile",
        (_int("downscale_steps", 3, 0, 6, "Shrink by 2^steps before enlarging back."),),
    ),
    AnnotatorSpec(
        "blur", "Blur", "Gaussian-blurred image, for tile/blur ControlNets.", "tile:blur",
        (_float("sigma", 5.0, 0.0, 100.0, "Blur standard deviation in pixels at detection resolution."),),
    ),
    AnnotatorSpec(
        "color_palette", "Colour palette", "Coarse cells of mean colour, for colour adapters.", "color_palette:color_palette",
        (_int("cell_size", 64, 1, 512, "Cell size in pixels at detection resolution."),),
    ),
    AnnotatorSpec(
        "shuffle", "Content shuffle", "Image warped along a smooth random flow (seeded, deterministic).", "shuffle:content_shuffle",
        (
            _int("seed", 0, 0, 2**32 - 1, "Random seed; the same seed gives the same shuffle."),
            _int("flow_scale", 256, 8, 4096, "Size in pixels over which the flow varies (larger = smoother)."),
        ),
    ),
    AnnotatorSpec(
        "inpaint", "Inpaint", "Image with masked pixels set to -1 (SD1.5 inpaint ControlNet) or black (xinsir).",
        "inpaint:inpaint",
        (_choice("masked_value", ("-1", "black"), "-1", "-1: control_v11p_sd15_inpaint convention; black: xinsir union/promax."),),
        default_resolution=None,
        needs_mask=True,
    ),
    AnnotatorSpec(
        "normal_from_depth", "Normals from depth", "Normal map computed from a depth map (near = bright).",
        "normal_from_depth:normal_from_depth",
        (
            _float("strength", 1.0, 0.01, 100.0, "Depth relief: 1 tilts a full-range ramp across the image by 45°.", 0.01),
            _float("blur_sigma", 1.0, 0.0, 20.0, "Smooth the depth first (hides 8-bit steps)."),
            _float("background_threshold", 0.0, 0.0, 1.0, "Depth below this faces the camera (flat background).", 0.01),
            _bool("invert_x", False, "Flip the left/right component, for models trained with the other handedness."),
            _bool("invert_y", False, "Flip the up/down component (green)."),
            _choice("convention", ("normal_bae", "normal_midas"), "normal_bae",
                    "Channel order for the ControlNet that reads the map. normal_bae: ControlNet 1.1 normalbae "
                    "and rendered normal maps (red = left, green = up, blue = front). normal_midas: ControlNet 1.0 "
                    "control_sd15_normal (red = front, green = up, blue = left).", added_later=True),
        ),
        input_kind=INPUT_DEPTH,
        default_resolution=None,
    ),
    AnnotatorSpec(
        "segmentation", "Segmentation render", "Draws a class-index label map with the ADE20K 150-class palette.",
        "segmentation:render_segmentation",
        (_int("label_offset", 0, 0, 1, "0: labels 0..149 are classes; 1: ADE20K raw files (0 = unlabelled, 1..150)."),),
        input_kind=INPUT_LABELS,
        default_resolution=None,
    ),
    AnnotatorSpec(
        "openpose", "OpenPose", "Body (and hand) keypoints drawn as an OpenPose map; also returns POSE_KEYPOINT.",
        "neural:openpose",
        (
            _bool("include_hands", True, "Also detect hand keypoints (needs hand_pose_model.pth)."),
            _bool("draw_body", True, "Draw the body skeleton."),
            _bool("draw_hands", True, "Draw hand skeletons."),
        ),
        weights=(
            WeightFile("body_pose_model.pth", "https://huggingface.co/lllyasviel/Annotators"),
            WeightFile("hand_pose_model.pth", "https://huggingface.co/lllyasviel/Annotators"),
        ),
        outputs_pose=True,
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "pose_render", "Pose render", "Draws POSE_KEYPOINT / OpenPose JSON keypoints as an OpenPose map.",
        "neural:pose_render",
        (
            _bool("draw_body", True, "Draw the body skeleton."),
            _bool("draw_hands", True, "Draw hand skeletons."),
            _bool("draw_face", True, "Draw face landmarks."),
        ),
        input_kind=INPUT_POSE,
        default_resolution=None,
        sample="",
    ),
    # --- pose, face and segmentation annotators of issue 11 (openpose_face/full, dwpose, mediapipe_face, seg_ufade20k) ---
    AnnotatorSpec(
        "openpose_face", "OpenPose + face", "Body and face keypoints (OpenPose body + face networks) drawn as an "
        "OpenPose map; also returns POSE_KEYPOINT.",
        "neural:openpose_face",
        (
            _bool("draw_body", True, "Draw the body skeleton."),
            _bool("draw_face", True, "Draw the 70 face keypoints."),
        ),
        weights=(
            WeightFile("body_pose_model.pth", "https://huggingface.co/lllyasviel/Annotators"),
            WeightFile("facenet.pth", "https://huggingface.co/lllyasviel/Annotators"),
        ),
        outputs_pose=True,
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "openpose_full", "OpenPose full", "Body, hand and face keypoints (all three OpenPose networks) drawn as an "
        "OpenPose map; also returns POSE_KEYPOINT.",
        "neural:openpose_full",
        (
            _bool("draw_body", True, "Draw the body skeleton."),
            _bool("draw_hands", True, "Draw hand skeletons."),
            _bool("draw_face", True, "Draw the 70 face keypoints."),
        ),
        weights=(
            WeightFile("body_pose_model.pth", "https://huggingface.co/lllyasviel/Annotators"),
            WeightFile("hand_pose_model.pth", "https://huggingface.co/lllyasviel/Annotators"),
            WeightFile("facenet.pth", "https://huggingface.co/lllyasviel/Annotators"),
        ),
        outputs_pose=True,
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "dwpose", "DWPose", "Body, hand and face keypoints from DWPose (YOLOX + RTMPose whole-body) drawn as an "
        "OpenPose map; also returns POSE_KEYPOINT.",
        "neural:dwpose",
        (
            _bool("draw_body", True, "Draw the body skeleton."),
            _bool("draw_hands", True, "Draw hand skeletons."),
            _bool("draw_face", True, "Draw the face keypoints."),
        ),
        weights=(
            WeightFile("yolox_l.onnx", "https://huggingface.co/yzd-v/DWPose"),
            WeightFile("dw-ll_ucoco_384.onnx", "https://huggingface.co/yzd-v/DWPose"),
        ),
        outputs_pose=True,
        requires=("onnxruntime",),
    ),
    AnnotatorSpec(
        "mediapipe_face", "MediaPipe face", "Face mesh contours (MediaPipe Face Mesh; its model ships inside the "
        "mediapipe package, no weight file) for the face ControlNet.",
        "neural:mediapipe_face",
        (
            _int("max_faces", 1, 1, 50, "Most faces to find per image."),
            _float("min_confidence", 0.5, 0.01, 1.0, "Face detection confidence a face needs.", 0.01),
        ),
        requires=("mediapipe",),
    ),
    AnnotatorSpec(
        "seg_ufade20k", "UniFormer segmentation", "ADE20K semantic segmentation (UniFormer-S UperNet) drawn with the "
        "ADE20K palette, for segmentation ControlNets.",
        "neural:seg_ufade20k",
        (),
        weights=(WeightFile("upernet_global_small.pth", "https://huggingface.co/lllyasviel/Annotators"),),
        batch_chunk=4,
    ),
    # --- end of the pose, face and segmentation annotators ---
    AnnotatorSpec(
        "depth_anything_v2", "Depth Anything V2", "Relative depth (near = bright) from Depth Anything V2 small.",
        "neural:depth_anything_v2",
        (),
        default_resolution=518,
        weights=(WeightFile("depth_anything_v2_vits.pth", "https://huggingface.co/depth-anything/Depth-Anything-V2-Small"),),
        sample="coffee.png",
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "hed", "HED soft edges", "Soft edges from the HED network (ControlNet 1.1 softedge).",
        "neural:hed",
        (_bool("safe", False, "Quantise the edges (HED 'safe' mode: fewer hidden details leak into the map)."),),
        weights=(WeightFile("ControlNetHED.pth", "https://huggingface.co/lllyasviel/Annotators"),),
        batch_chunk=4,
    ),
    # --- depth and normal networks (issue 11) ---------------------------------------------------
    AnnotatorSpec(
        "depth_midas", "MiDaS depth", "Relative depth (near = bright) from MiDaS v3.0 DPT-Hybrid (ControlNet 1.1 depth).",
        "neural:depth_midas",
        (),
        weights=(WeightFile("dpt_hybrid-midas-501f0c75.pt", "https://huggingface.co/lllyasviel/Annotators"),),
        sample="coffee.png",
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "normal_midas", "MiDaS normals", "ControlNet 1.0 normal map from MiDaS depth (slopes; the background faces the camera).",
        "neural:normal_midas",
        (
            _float("a", float(2 * np.pi), 0.0, float(5 * np.pi), "Normal z component: larger = flatter normals.", 0.01),
            _float("bg_threshold", 0.1, 0.0, 1.0, "Normalised depth below this is background, drawn facing the camera.", 0.01),
        ),
        weights=(WeightFile("dpt_hybrid-midas-501f0c75.pt", "https://huggingface.co/lllyasviel/Annotators"),),
        sample="coffee.png",
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "depth_zoe", "ZoeDepth", "Metric depth from ZoeDepth (ZoeD_N), mapped near = bright by its percentiles.",
        "neural:depth_zoe",
        (_bool("gamma_corrected", False, "Raise the map to the power 2.2 (darker midtones)."),),
        weights=(WeightFile("ZoeD_M12_N.pt", "https://huggingface.co/lllyasviel/Annotators"),),
        sample="coffee.png",
        batch_chunk=2,
    ),
    AnnotatorSpec(
        "depth_anything_v2_vitb", "Depth Anything V2 (base)", "Relative depth (near = bright) from Depth Anything V2 base.",
        "neural:depth_anything_v2_vitb",
        (),
        default_resolution=518,
        weights=(WeightFile("depth_anything_v2_vitb.pth", "https://huggingface.co/depth-anything/Depth-Anything-V2-Base"),),
        sample="coffee.png",
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "depth_anything_v2_vitl", "Depth Anything V2 (large)", "Relative depth (near = bright) from Depth Anything V2 large.",
        "neural:depth_anything_v2_vitl",
        (),
        default_resolution=518,
        weights=(WeightFile("depth_anything_v2_vitl.pth", "https://huggingface.co/depth-anything/Depth-Anything-V2-Large"),),
        sample="coffee.png",
        batch_chunk=2,
    ),
    AnnotatorSpec(
        "normal_bae", "NormalBAE normals", "Surface normals from NormalBAE (ControlNet 1.1 normalbae).",
        "neural:normal_bae",
        (),
        weights=(WeightFile("scannet.pt", "https://huggingface.co/lllyasviel/Annotators"),),
        sample="coffee.png",
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "depth_leres", "LeReS depth", "Relative depth (near = bright) from LeReS (ResNeXt-101).",
        "neural:depth_leres",
        (
            _float("thr_a", 0.0, 0.0, 100.0, "Remove near depth: the nearest thr_a % of the range turns white.", 1.0),
            _float("thr_b", 0.0, 0.0, 100.0, "Remove background: the farthest thr_b % of the range turns black.", 1.0),
        ),
        weights=(WeightFile("res101.pth", "https://huggingface.co/lllyasviel/Annotators"),),
        sample="coffee.png",
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "depth_leres++", "LeReS++ depth", "LeReS boosted by merging resolutions and edge-dense patches (slow; frame by frame).",
        "neural:depth_leres_boost",
        (
            _float("thr_a", 0.0, 0.0, 100.0, "Remove near depth: the nearest thr_a % of the range turns white.", 1.0),
            _float("thr_b", 0.0, 0.0, 100.0, "Remove background: the farthest thr_b % of the range turns black.", 1.0),
        ),
        weights=(
            WeightFile("res101.pth", "https://huggingface.co/lllyasviel/Annotators"),
            WeightFile("latest_net_G.pth", "https://huggingface.co/lllyasviel/Annotators"),
        ),
        sample="coffee.png",
        batch_chunk=1,
    ),
    # --- end of depth and normal networks ----------------------------------------------------------
    # Line and edge networks, under controlnet_aux's processor ids (issue 11).
    AnnotatorSpec(
        "lineart_realistic", "Line art (realistic)", "Line art from photos, white lines on black (ControlNet 1.1 lineart).",
        "neural:lineart",
        weights=(WeightFile("sk_model.pth", _LLLYASVIEL),),
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "lineart_coarse", "Line art (coarse)", "Bolder, simpler line art, white lines on black (ControlNet 1.1 lineart, coarse).",
        "neural:lineart",
        preset=(("coarse", True),),
        weights=(WeightFile("sk_model2.pth", _LLLYASVIEL),),
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "lineart_anime", "Line art (anime)", "Anime-style line art, white lines on black (ControlNet 1.1 lineart_anime).",
        "neural:lineart_anime",
        weights=(WeightFile("netG.pth", _LLLYASVIEL),),
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "mlsd", "M-LSD lines", "Straight lines from the M-LSD network, white on black (ControlNet 1.1 mlsd).",
        "neural:mlsd",
        (
            _float("score_threshold", 0.1, 0.0, 1.0, "Confidence (0-1) a line centre needs to become a segment.", 0.01),
            _float("distance_threshold", 0.1, 0.0, 512.0,
                   "Drop segments not longer than this (pixels at half the detection resolution).", 0.1),
        ),
        weights=(WeightFile("mlsd_large_512_fp32.pth", _LLLYASVIEL),),
        sample="coffee.png",
        batch_chunk=8,
    ),
    AnnotatorSpec(
        "softedge_pidinet", "PiDiNet soft edges", "Soft edges from PiDiNet, gray (ControlNet 1.1 softedge).",
        "neural:pidinet",
        (_SAFE_EDGES,),
        weights=(WeightFile("table5_pidinet.pth", _LLLYASVIEL),),
        batch_chunk=8,
    ),
    AnnotatorSpec(
        "scribble_pidinet", "PiDiNet scribble", "Binary scribble strokes from PiDiNet edges (ControlNet 1.1 scribble).",
        "neural:pidinet",
        (_SAFE_EDGES,),
        preset=(("scribble", True),),
        weights=(WeightFile("table5_pidinet.pth", _LLLYASVIEL),),
        batch_chunk=8,
    ),
    AnnotatorSpec(
        "scribble_hed", "HED scribble", "Binary scribble strokes from HED edges (ControlNet 1.1 scribble, 'fake scribble').",
        "neural:hed",
        (_SAFE_EDGES,),
        preset=(("scribble", True),),
        weights=(WeightFile("ControlNetHED.pth", _LLLYASVIEL),),
        batch_chunk=4,
    ),
    AnnotatorSpec(
        "teed", "TEED soft edges", "Soft edges from the tiny TEED network, white on black.",
        "neural:teed",
        (_int("safe_steps", 2, 0, 10, "Quantise to this many + 1 gray levels (0 = keep every level)."),),
        weights=(WeightFile("5_model.pth", "https://huggingface.co/fal-ai/teed"),),
        batch_chunk=8,
    ),
)

# controlnet_aux processor ids that are another annotator with some parameters fixed.
_ALIASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("softedge_hed", "hed", {}),
    ("softedge_hedsafe", "hed", {"safe": True}),
    ("scribble_hedsafe", "scribble_hed", {"safe": True}),
    ("softedge_pidsafe", "softedge_pidinet", {"safe": True}),
    ("scribble_pidsafe", "scribble_pidinet", {"safe": True}),
)


def _alias(name: str, base: AnnotatorSpec, fixed: dict[str, Any]) -> AnnotatorSpec:
    """``name`` runs ``base`` with the parameters in ``fixed`` set (and no longer settable)."""
    fixed = {key: base.param(key).validate(value) for key, value in fixed.items()}
    settings = "".join(f", {key}={value}" for key, value in fixed.items())
    return replace(
        base,
        name=name,
        display_name=base.display_name + "".join(f" ({key})" for key in fixed),
        description=f"Same as {base.name}{settings} (controlnet_aux's id).",
        params=tuple(param for param in base.params if param.name not in fixed),
        preset=base.preset + tuple(fixed.items()),
        alias_of=base.name,
    )


REGISTRY: dict[str, AnnotatorSpec] = {spec.name: spec for spec in _SPECS}
REGISTRY.update({name: _alias(name, REGISTRY[base], fixed) for name, base, fixed in _ALIASES})


def annotator_names() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> AnnotatorSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise AnnotatorInputError(f"annotator: expected one of {annotator_names()}, found {name!r}") from None


def _batch_length(inputs: Any, input_kind: str) -> int:
    if input_kind == INPUT_POSE:
        return len(inputs) if isinstance(inputs, (list, tuple)) else 1
    shape = getattr(inputs, "shape", None)
    if shape is None:
        return len(inputs) if isinstance(inputs, (list, tuple)) else 1
    if len(shape) == 4:
        return int(shape[0])
    # Depth and label maps may come as B×H×W stacks (a 3-D array with 1/3/4 last is one H×W×C map).
    if len(shape) == 3 and input_kind in (INPUT_DEPTH, INPUT_LABELS) and shape[-1] not in (1, 3, 4):
        return int(shape[0])
    return 1


MIN_RESOLUTION = 64
MAX_RESOLUTION = MAX_DETECTION_SIDE


def validate_resolution(value: Any) -> int:
    """A detection resolution: 0 (detect at the input's own size) or 64..16384 pixels (short side)."""
    number = ParamSpec("resolution", "int", 512, "", 0, MAX_RESOLUTION).validate(value)
    if 0 < number < MIN_RESOLUTION:
        raise AnnotatorInputError(
            f"resolution: expected 0 (detect at the input's own size) or a value in "
            f"[{MIN_RESOLUTION}, {MAX_RESOLUTION}], found {value!r}"
        )
    return number


def run_annotator(
    name: str,
    inputs: Any,
    *,
    resolution: int | None = None,
    models_dir: str | None = None,
    mask: Any = None,
    device: Any = None,
    on_progress: ProgressCallback | None = None,
    **params: Any,
) -> AnnotatorResult:
    """Run annotator ``name`` over a batch, in chunks, reporting ``on_progress(done, total)``.

    ``inputs`` is a ``B×H×W×C`` batch or one image (photos, depth maps, label maps), or POSE_KEYPOINT
    frames for ``pose_render``. ``resolution`` is the detection short side (the annotator's default
    when None; 0 detects at the input's own size; ignored by annotators that always work at the
    input's own size). A size whose detection image would be too large is refused before anything runs. Unknown or out-of-range
    parameters raise :class:`AnnotatorInputError`; missing weight files raise MissingWeightsError.
    ``models_dir`` (folder of weight files) and ``device`` (torch device) matter to neural annotators only.
    """
    spec = get_spec(name)
    function = spec.load()
    kwargs = {**dict(spec.preset), **spec.resolve_params(params)}
    if spec.uses_resolution:
        kwargs["resolution"] = validate_resolution(spec.default_resolution if resolution is None else resolution)
        shape = getattr(inputs, "shape", None)
        if spec.input_kind == INPUT_IMAGE and shape is not None and len(shape) in (2, 3, 4):
            # Refuse an impossible detection size now, before weights are loaded or memory allocated.
            height, width = shape[1:3] if len(shape) == 4 else shape[:2]
            if height > 0 and width > 0:
                check_detection_size(int(height), int(width), kwargs["resolution"])
    if spec.weights:
        kwargs["models_dir"] = models_dir
        kwargs["device"] = device
    if spec.needs_mask:
        kwargs["mask"] = mask
    elif mask is not None:
        raise AnnotatorInputError(f"{name}: takes no mask, but a mask was given")

    total = _batch_length(inputs, spec.input_kind)
    chunk = max(1, spec.batch_chunk)
    if total <= chunk:
        outputs = [function(inputs, **kwargs)]
    else:
        outputs = []
        for start in range(0, total, chunk):
            part_kwargs = dict(kwargs)
            if spec.needs_mask:
                part_kwargs["mask"] = _slice_mask(mask, start, chunk, total)
            outputs.append(function(inputs[start : start + chunk], **part_kwargs))
            if on_progress is not None:
                on_progress(min(start + chunk, total), total)
    if on_progress is not None and total <= chunk:
        on_progress(total, total)
    return _merge(outputs)


def _slice_mask(mask: Any, start: int, chunk: int, total: int) -> Any:
    """The masks for frames ``start:start+chunk``; one shared mask stays shared."""
    shape = getattr(mask, "shape", None)
    if shape is not None and len(shape) >= 3 and shape[0] == total:
        return mask[start : start + chunk]
    return mask


def _merge(outputs: list[Any]) -> AnnotatorResult:
    images, poses = [], []
    for output in outputs:
        if isinstance(output, AnnotatorResult):
            images.append(output.images)
            poses.extend(output.pose_keypoints or [])
        else:
            images.append(np.asarray(output))
    merged = images[0] if len(images) == 1 else np.concatenate(images)
    return AnnotatorResult(merged, poses or None)


__all__ = [
    "AnnotatorResult",
    "AnnotatorSpec",
    "ParamSpec",
    "WeightFile",
    "REGISTRY",
    "SAMPLES_DIR",
    "annotator_names",
    "get_spec",
    "run_annotator",
    "validate_resolution",
    "INPUT_IMAGE",
    "INPUT_DEPTH",
    "INPUT_LABELS",
    "INPUT_POSE",
]
