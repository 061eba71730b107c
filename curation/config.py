"""The curation config tree: one frozen dataclass per component, loaded once in `main()`.

    CurateConfig
      ray        RayConfig
      ingest     IngestConfig
      split      SplitConfig
      score      ScoreConfig    (filters/config.py: motion, ocr, quality, nsfw, aesthetic)
      dedup      DedupConfig    (filters/config.py: near-duplicates from CLIP embeddings)
      filter     FilterConfig   (filters/config.py: tiers)
      caption    CaptionConfig  (backends: models/captioner/config.py)
      align      AlignConfig    (CLIP text-video similarity)
      shard      ShardConfig

Each field's docstring gives its unit and range. `load_config(path, overrides)` applies
`--set a.b.c=value` overrides before validation, so a bad override fails with the key's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from filters.config import DecodeLanesConfig, DedupConfig, FilterConfig, SceneConfig, ScoreConfig
from manifests.configtools import ConfigError, Resources, apply_overrides, build, check, read_yaml
from models.captioner.config import (
    DEFAULT_PROMPT,
    PROMPT_FIELDS,
    OpenAICaptionerConfig,
    SidecarCaptionerConfig,
    TransformersCaptionerConfig,
    prompt_hash,
    render_prompt,
)


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    """Ray cluster to join (e.g. 'ray://head:10001', or 'auto' for the local one that
    `reelsift cluster start` started); null = a fresh embedded local Ray per command.
    RAY_ADDRESS in the environment or --ray-address override this."""
    num_cpus: int | None = None
    """CPUs for the embedded local instance; null = all of this machine's."""
    object_store_mb: int = 1024
    """Object-store size of the embedded local instance, MiB (>= 128)."""
    progress: bool = True
    """Show Ray Data progress bars (turn off for logs)."""
    flush_rows: int = 256
    """Result rows buffered on the driver before they are written as one part (>= 1); a
    killed run redoes at most this many rows per stage."""
    flush_s: float = 30.0
    """...or after this many seconds, whichever comes first (> 0)."""
    inline_max_items: int = 0
    """A stage with at most this many items to do runs inside the CLI process, on one thread
    per CPU, without starting Ray (>= 0; 0 = always Ray). Starting an embedded Ray costs about
    6.5 CPU-seconds and 1.5 GiB per command (joining a running local one about 3), more than a
    small stage's work. Never applies when joining a cluster (address / RAY_ADDRESS) or when an
    operator asks for a GPU."""

    def __post_init__(self):
        check(self.object_store_mb >= 128, "ray.object_store_mb", "must be >= 128")
        check(self.flush_rows >= 1, "ray.flush_rows", "must be >= 1")
        check(self.flush_s > 0, "ray.flush_s", "must be > 0")
        check(self.inline_max_items >= 0, "ray.inline_max_items", "must be >= 0")


@dataclass(frozen=True)
class IngestConfig:
    extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
    """File extensions treated as videos when walking a folder (case-insensitive)."""
    recursive: bool = True
    """Walk sub-folders of the input folder."""
    probe_frames: int = 1
    """Frames decoded during probing to prove the stream is decodable (>= 0)."""
    timeout_s: float = 120.0
    """Hard time limit for hashing and probing one file, seconds (> 0): the work runs in a
    child process that is killed past it (a read that never returns can't stall the run)."""
    max_pixels: int = 4096 * 2304
    """Largest frame (width x height) taken; a bigger video is an error row, so decoding never
    comes near the memory limit (>= 1; the default takes 4K UHD and DCI 4K, not 8K)."""
    resources: Resources = field(default_factory=lambda: Resources(batch_size=8))
    """Scheduling of the ingest operator."""

    def __post_init__(self):
        check(self.probe_frames >= 0, "ingest.probe_frames", "must be >= 0")
        check(self.timeout_s > 0, "ingest.timeout_s", "must be > 0")
        check(self.max_pixels >= 1, "ingest.max_pixels", "must be >= 1")


@dataclass(frozen=True)
class SplitConfig:
    scenes: SceneConfig = field(default_factory=SceneConfig)
    """Scene detector settings (filters/scenes.py)."""
    min_clip_s: float = 2.0
    """Scenes shorter than this are kept as rejected rows, seconds (> 0)."""
    max_clip_s: float = 10.0
    """Longer scenes are cut into pieces of at most this length, seconds (> min_clip_s)."""
    trim_frames: int = 2
    """Frames dropped at each side of every cut, so fades/cut frames stay out (>= 0)."""
    timeout_s: float = 600.0
    """Per-video time limit for scene detection, seconds; over it the video is an error row.
    Checked between frames, and enforced from outside (curation/guard.py) a little later."""
    resources: Resources = field(default_factory=lambda: Resources(batch_size=1))
    """Scheduling of the split operator (one video per batch is usual)."""

    def __post_init__(self):
        check(self.min_clip_s > 0, "split.min_clip_s", "must be > 0")
        check(self.max_clip_s > self.min_clip_s, "split.max_clip_s", "must be > split.min_clip_s")
        check(self.trim_frames >= 0, "split.trim_frames", "must be >= 0")
        check(self.timeout_s > 0, "split.timeout_s", "must be > 0")


@dataclass(frozen=True)
class ShardConfig:
    max_samples: int = 256
    """Most clips per tar (>= 1)."""
    max_bytes: int = 256 * 1024 * 1024
    """A tar is closed once it holds this many bytes (>= 1 MiB)."""
    codec: Literal["libx264"] = "libx264"
    """Encoder of the clip mp4s."""
    crf: int = 20
    """x264 constant rate factor (0-51, lower is better quality)."""
    preset: str = "veryfast"
    """x264 preset (ultrafast .. veryslow)."""
    clips_per_task: int = 16
    """Clips handed to one shard-writer task; each task writes its own tar(s) (>= 1)."""
    timeout_s: float = 600.0
    """Per-clip time limit for cutting and encoding, seconds; over it the clip is an error row."""
    resources: Resources = field(default_factory=lambda: Resources(batch_size=1))
    """Scheduling of the shard writers (batch = one group of clips_per_task clips)."""

    def __post_init__(self):
        check(self.max_samples >= 1, "shard.max_samples", "must be >= 1")
        check(self.max_bytes >= 1 << 20, "shard.max_bytes", "must be >= 1 MiB")
        check(0 <= self.crf <= 51, "shard.crf", "must be in 0..51")
        check(self.clips_per_task >= 1, "shard.clips_per_task", "must be >= 1")
        check(self.timeout_s > 0, "shard.timeout_s", "must be > 0")


@dataclass(frozen=True)
class CaptionConfig:
    backend: Literal["transformers", "openai", "sidecar"] = "transformers"
    """Which captioner runs: in-process VLM, OpenAI-compatible server, or sidecar files."""
    prompt: str = DEFAULT_PROMPT
    """Prompt template; may use {n_frames} and {duration_s}. Its hash keys the rows: a new
    template captions every kept clip again (old captions stay in captions_history)."""
    n_frames: int = 8
    """Frames sampled evenly over each clip and shown to the VLM (>= 2)."""
    short_side: int = 448
    """Short side the sampled frames are resized to before the backend sees them, pixels (>= 28)."""
    timeout_s: float = 300.0
    """Per-clip decode time limit, seconds (> 0)."""
    min_words: int = 30
    """Shorter post-processed captions are error rows, words (>= 1)."""
    max_words: int = 180
    """Longer captions are cut to their last full sentence within this many words (>= min_words)."""
    retry_errors: bool = False
    """Caption again clips whose row for this (model, prompt) is an error (e.g. server was down)."""
    transformers: TransformersCaptionerConfig = field(default_factory=TransformersCaptionerConfig)
    """In-process VLM backend (models/captioner.py)."""
    openai: OpenAICaptionerConfig = field(default_factory=OpenAICaptionerConfig)
    """OpenAI-compatible server backend (vLLM, SGLang)."""
    sidecar: SidecarCaptionerConfig = field(default_factory=SidecarCaptionerConfig)
    """Captions read from files beside each source video."""
    decode: Resources = field(default_factory=lambda: Resources(batch_size=8))
    """Scheduling of the frame-decoding operator (CPU)."""
    captioner: Resources = field(default_factory=lambda: Resources(batch_size=8, concurrency=1))
    """Scheduling of the captioner operator; set num_gpus: 1 for the transformers backend on GPU."""
    decode_lane: str = "auto"
    """Which lane decodes the frames: auto (on a GPU node, NVDEC and CPU workers inside the
    captioner's GPU actor; elsewhere the CPU decode operator), cpu, or nvdec (NVDEC only)."""
    lanes: DecodeLanesConfig = field(
        default_factory=lambda: DecodeLanesConfig(nvdec_sessions=2, cpu_workers=1)
    )
    """The decode lanes inside the captioner's GPU actor (decode_lane auto or nvdec on a GPU)."""

    def __post_init__(self):
        lanes = ("auto", "cpu", "nvdec")
        check(self.decode_lane in lanes, "caption.decode_lane", "must be auto, cpu or nvdec")
        check(self.n_frames >= 2, "caption.n_frames", "must be >= 2")
        check(self.short_side >= 28, "caption.short_side", "must be >= 28")
        check(self.timeout_s > 0, "caption.timeout_s", "must be > 0")
        check(self.min_words >= 1, "caption.min_words", "must be >= 1")
        check(self.max_words >= self.min_words, "caption.max_words", "must be >= caption.min_words")
        try:
            render_prompt(self.prompt, **PROMPT_FIELDS)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"caption.prompt: bad template ({exc!r}); placeholders allowed: "
                f"{sorted(PROMPT_FIELDS)}; write literal braces as {{{{ }}}}"
            ) from exc

    @property
    def model_name(self) -> str:
        """What the `model` column records for the configured backend."""
        if self.backend == "transformers":
            return self.transformers.model
        if self.backend == "openai":
            return self.openai.model
        return f"sidecar:json:{self.sidecar.json_field}" if self.sidecar.json_field else "sidecar:txt"

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.prompt if self.backend != "sidecar" else "")


@dataclass(frozen=True)
class AlignConfig:
    device: str | None = None
    """torch device of the CLIP text encoder; null = score.aesthetic.device."""
    batch_size: int = 64
    """Captions per text-encoder forward pass (>= 1)."""
    resources: Resources = field(default_factory=lambda: Resources(batch_size=256, concurrency=1))
    """Scheduling of the align operator (one CLIP text encoder per actor)."""

    def __post_init__(self):
        check(self.batch_size >= 1, "align.batch_size", "must be >= 1")
        check(
            self.device is None or self.device.startswith(("cpu", "cuda", "mps")),
            "align.device",
            f"must be cpu, cuda[:N], mps or null, got {self.device!r}",
        )


@dataclass(frozen=True)
class CurateConfig:
    ray: RayConfig = field(default_factory=RayConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> CurateConfig:
    """Read YAML (or start from defaults when `path` is None), apply overrides, validate.

    A YAML file may hold a `train:` section too; it is ignored here (training reads it).
    """
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    data = {k: v for k, v in data.items() if k not in ("train",)}
    return build(CurateConfig, data)


__all__ = ["ConfigError", "CurateConfig", "Resources", "load_config"]
