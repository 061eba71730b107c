"""Every model weight a stage loads, resolved in the driver before any work starts.

A stage's actors load their models in their own processes; a weight that cannot be had (no
network, a typo in a hub id, a missing file) would otherwise fail there, once per actor, deep in
a Ray traceback. `prefetch(cfg, stages)` fetches each configured hub weight into the local cache
(the actors then find it there) or checks each local path, in the order the stages load them,
and raises `WeightsUnavailable`: one line naming the config key and the `--set` that points it
at a local file, which the CLI prints before exiting with code 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from manifests.configtools import ConfigError

HF_PREFIX = "hf-hub:"


class WeightsUnavailable(ConfigError):
    """A configured weight cannot be fetched or found; the message is one line saying what to set."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _fail(key: str, spec: str, why: str, example: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{key}: could not fetch {spec!r} ({why}); set a local path: --set {key}={example}"
    )


def _hub_file(repo: str, filename: str, revision: str | None = None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=filename, revision=revision)


def aesthetic_head(spec: str, key: str) -> None:
    """The LAION head: `hf-hub:<org>/<repo>/<file>` fetched into the HF cache, or a local file."""
    example = "/path/to/aesthetic-model.pth"
    if not spec.startswith(HF_PREFIX):
        if not os.path.isfile(os.path.expanduser(spec)):
            raise WeightsUnavailable(
                f"{key}: file {spec!r} not found; set a local path: --set {key}={example}"
            )
        return
    parts = spec[len(HF_PREFIX):].split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise WeightsUnavailable(f"{key}: hub id must look like hf-hub:<org>/<repo>/<file>, got {spec!r}")
    try:
        _hub_file(f"{parts[0]}/{parts[1]}", parts[2])
    except Exception as exc:  # network, auth, missing file: all mean "not available here"
        raise _fail(key, spec, _one_line(exc), example) from exc


def clip_weights(arch: str, pretrained: str, key: str) -> None:
    """open_clip weights: a tag (fetched by open_clip into its cache), a hub id, or a local file."""
    import open_clip

    from models.clip import ARCHS

    example = "/path/to/open_clip_model.safetensors"
    base = ARCHS.get(arch, (arch, {}))[0]
    if pretrained.startswith(HF_PREFIX):
        try:
            _hub_file(pretrained[len(HF_PREFIX):], "open_clip_config.json")
        except Exception as exc:
            raise _fail(key, pretrained, _one_line(exc), example) from exc
        return
    if pretrained not in open_clip.list_pretrained_tags_by_model(base):
        if not os.path.isfile(os.path.expanduser(pretrained)):
            raise WeightsUnavailable(
                f"{key}: {pretrained!r} is neither an open_clip tag of {base} nor a file; "
                f"set one: --set {key}={example}"
            )
        return
    try:
        if not open_clip.download_pretrained(open_clip.get_pretrained_cfg(base, pretrained)):
            raise FileNotFoundError("open_clip has no download for this tag")
    except Exception as exc:
        raise _fail(key, pretrained, _one_line(exc), example) from exc


def vlm(model: str, revision: str | None, local_files_only: bool, key: str) -> None:
    """A transformers VLM: a local folder, or a hub repo fetched into the HF cache."""
    from models.captioner.common import RANDOM_PREFIX, TINY_VLM

    if model == TINY_VLM or model.startswith(RANDOM_PREFIX) or os.path.isdir(os.path.expanduser(model)):
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, revision=revision, local_files_only=local_files_only)
    except Exception as exc:
        raise _fail(key, model, _one_line(exc), "/path/to/model-folder") from exc


def needed(cfg, stage: str) -> list[tuple[str, Callable[[], None]]]:
    """(config key, resolver) of each weight `stage` loads with `cfg`, in load order."""
    aes = cfg.score.aesthetic
    clip = [] if aes.random_init else [
        ("score.aesthetic.clip_pretrained", lambda: clip_weights(aes.clip_model, aes.clip_pretrained,
                                                                 "score.aesthetic.clip_pretrained")),
    ]
    if stage == "score" and not aes.random_init:
        head = ("score.aesthetic.head_weights",
                lambda: aesthetic_head(aes.head_weights, "score.aesthetic.head_weights"))
        return [head, *clip]  # the head first: its failure must come before a large CLIP download
    if stage == "align":
        return clip
    if stage == "caption" and cfg.caption.backend == "transformers":
        t = cfg.caption.transformers
        return [("caption.transformers.model",
                 lambda: vlm(t.model, t.revision, t.local_files_only, "caption.transformers.model"))]
    return []


def prefetch(cfg, stages: Iterable[str]) -> None:
    """Resolve every weight of `stages` (each key once) or raise WeightsUnavailable."""
    done = set()
    for stage in stages:
        for key, resolve in needed(cfg, stage):
            if key not in done:
                resolve()
                done.add(key)
