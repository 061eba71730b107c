"""caption stage: post-processing, resume keys, and each backend on real decoded clips.

The transformers backend runs a tiny random Qwen2.5-VL saved to a temp folder and loaded by
path through the real stage and Ray; the openai backend talks to a loopback server that checks
every request and injects 429, 500, a hang and a refusal; sidecar reads files beside the video.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow as pa
import pytest

from curation.config import CaptionConfig
from curation.stages.caption import CaptionClips, DecodeForCaption, caption, pending_clips
from manifests.configtools import ConfigError, Resources, build
from manifests.db import connect
from manifests.schemas import CAPTIONS
from manifests.store import Table, rows_to_table
from models.captioner import (
    DEFAULT_PROMPT,
    TINY_VLM,
    OpenAICaptionerConfig,
    SidecarCaptionerConfig,
    TransformersCaptionerConfig,
    build_tiny_vlm,
    clean_caption,
    prompt_hash,
)
from tests.media import make_video

# --------------------------------------------------------------------------------------------
# a run root: one 48-frame video cut into 6 clips; the last filter run keeps clips 0..4


def make_root(root: Path, n_clips: int = 6, kept: int = 5) -> dict:
    video = make_video(root / "in" / "ball.mp4", n_frames=48, size=(64, 48), fps=24, kind="moving")
    Table(root, "videos").write(pa.Table.from_pylist([dict(
        video_id="v0", path=str(video), status="ok", fps=24.0, n_frames=48, width=64, height=48,
        rotation=0, display_width=64, display_height=48)]))
    step = 48 // n_clips
    clips = [dict(clip_id=f"c{i}", video_id="v0", path=str(video), start_frame=i * step,
                  end_frame=(i + 1) * step, fps=24.0, duration_s=step / 24, width=64, height=48,
                  status="ok") for i in range(n_clips)]
    Table(root, "clips").write(pa.Table.from_pylist(clips))
    Table(root, "decisions").write(pa.Table.from_pylist([dict(
        clip_id=c["clip_id"], keep=i < kept, tier="256p" if i < kept else None, filter_run="r1")
        for i, c in enumerate(clips)]))
    return {"video": video, "kept": [f"c{i}" for i in range(kept)]}


def captions(root: Path, history: bool = False) -> list[dict]:
    view = "captions_history" if history else "captions"
    sql = f"SELECT * FROM {view} ORDER BY clip_id, created_at"
    return connect(root).sql(sql).to_arrow_table().to_pylist()


def run_local(cfg: CaptionConfig, root: Path) -> list[dict]:
    """Both operators of the stage, without Ray, on the pending clips."""
    items = pending_clips(root, cfg)
    out = CaptionClips(cfg)(DecodeForCaption(cfg)(items))
    Table(root, "captions").write(out)
    return out.to_pylist()


# --------------------------------------------------------------------------------------------
# post-processing and config


@pytest.mark.parametrize("raw, expected", [
    ("The video shows a red ball rolling across a wooden floor.",
     "A red ball rolling across a wooden floor."),
    ("In this video, a man walks his dog along a beach at dusk.",
     "A man walks his dog along a beach at dusk."),
    ("**Caption:** The clip depicts that a car drives down a wet road.", "A car drives down a wet road."),
    # cut by max_new_tokens: the unfinished last sentence is dropped, the paragraph joined
    ('  "A woman paints a canvas.\n\nThe camera pans left slowly to the window and then',
     "A woman paints a canvas."),
])
def test_clean_caption_strips_boilerplate(raw, expected):
    assert clean_caption(raw, min_words=3, max_words=50) == (expected, None)


@pytest.mark.parametrize("raw, reason", [
    ("I'm sorry, but I can't describe this video.", "refusal"),
    ("I cannot help with that request.", "refusal"),
    ("", "empty output"),
    (None, "empty output"),
    ("The video shows", "empty after removing boilerplate"),
    ("A dog.", "too short"),
    ("word " * 60, "too long"),
])
def test_clean_caption_errors_never_give_a_caption(raw, reason):
    text, why = clean_caption(raw, min_words=3, max_words=50)
    assert text is None and why.startswith(reason)


def test_long_caption_cut_at_sentence_within_max_words():
    raw = "A dog runs on grass. " * 10  # 50 words
    text, why = clean_caption(raw, min_words=3, max_words=12)
    assert why is None and text == "A dog runs on grass. A dog runs on grass."


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="caption.prompt"):
        build(CaptionConfig, {"prompt": "Describe {subject}."})
    with pytest.raises(ConfigError, match="caption.openai.concurrency"):
        build(CaptionConfig, {"openai": {"concurrency": 0}})
    with pytest.raises(ConfigError, match="caption.max_words"):
        build(CaptionConfig, {"min_words": 50, "max_words": 10})
    with pytest.raises(ConfigError, match="backend"):
        build(CaptionConfig, {"backend": "gpt"})
    cfg = build(CaptionConfig, {"prompt": "Describe {n_frames} frames ({duration_s:.0f} s) in {{one}} line."})
    assert cfg.prompt_hash == prompt_hash(cfg.prompt) != prompt_hash(DEFAULT_PROMPT)


def test_pending_keys_on_model_and_prompt(tmp_path):
    make_root(tmp_path)
    cfg = CaptionConfig(backend="openai")
    assert pending_clips(tmp_path, cfg).column("clip_id").to_pylist() == ["c0", "c1", "c2", "c3", "c4"]
    rows = [dict(clip_id=c, backend="openai", model=cfg.model_name, prompt_hash=cfg.prompt_hash,
                 status="ok" if c != "c1" else "error", caption="x", error=None if c != "c1" else "HTTP 500")
            for c in ("c0", "c1")]
    Table(tmp_path, "captions").write(rows_to_table(rows, CAPTIONS))
    assert pending_clips(tmp_path, cfg).column("clip_id").to_pylist() == ["c2", "c3", "c4"]
    assert pending_clips(tmp_path, replace(cfg, retry_errors=True)).column("clip_id").to_pylist() == [
        "c1", "c2", "c3", "c4"]
    new_prompt = replace(cfg, prompt="Describe it.")
    assert pending_clips(tmp_path, new_prompt).num_rows == 5
    new_model = replace(cfg, openai=replace(cfg.openai, model="other-vlm"))
    assert pending_clips(tmp_path, new_model).num_rows == 5


# --------------------------------------------------------------------------------------------
# sidecar


def test_sidecar_txt_and_json_field(tmp_path):
    info = make_root(tmp_path, n_clips=2, kept=2)
    video: Path = info["video"]
    cfg = CaptionConfig(backend="sidecar", min_words=3)
    rows = run_local(cfg, tmp_path)
    assert [r["status"] for r in rows] == ["error", "error"]
    assert "ball.txt not found" in rows[0]["error"]

    video.with_suffix(".txt").write_text("The video shows a red ball bouncing on a wooden floor.\n")
    rows = run_local(replace(cfg, retry_errors=True), tmp_path)
    expected = ("ok", "A red ball bouncing on a wooden floor.")
    assert [(r["status"], r["caption"]) for r in rows] == [expected] * 2
    assert rows[0]["model"] == "sidecar:txt" and rows[0]["backend"] == "sidecar"

    video.with_suffix(".json").write_text(json.dumps({"meta": {"caption": "A ball rolls across the floor."}}))
    json_cfg = replace(cfg, sidecar=SidecarCaptionerConfig(json_field="meta.caption"))
    rows = run_local(json_cfg, tmp_path)
    assert [r["caption"] for r in rows] == ["A ball rolls across the floor."] * 2
    assert len(captions(tmp_path, history=True)) == 6  # old rows kept; the view shows the newest
    assert {r["model"] for r in captions(tmp_path)} == {"sidecar:json:meta.caption"}


# --------------------------------------------------------------------------------------------
# openai: a loopback server that checks requests and misbehaves on purpose

REPLY = ("The video shows a small coloured square sliding across a textured background while the "
         "static camera holds a wide shot in even light.")


class FakeVLMServer:
    """OpenAI-compatible /v1/chat/completions. Each new clip (keyed by its first image) gets the
    next behaviour of `plan`: 429 once, 500 once, hang always, refuse, or answer."""

    def __init__(self, plan: list[str], n_images: int, prompt_start: str, api_key: str, hang_s: float):
        self.plan, self.n_images, self.prompt_start = list(plan), n_images, prompt_start
        self.api_key, self.hang_s = api_key, hang_s
        self.lock = threading.Lock()
        self.behaviour: dict[str, str] = {}
        self.attempts: dict[str, int] = {}
        self.problems: list[str] = []
        self.codes: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                problem = server.check(self.path, self.headers, body)
                if problem:
                    server.problems.append(problem)
                    return self.reply(400, {"error": problem})
                key = hashlib.sha1(body["messages"][0]["content"][0]["image_url"]["url"].encode()).hexdigest()
                with server.lock:
                    if key not in server.behaviour:
                        server.behaviour[key] = server.plan.pop(0) if server.plan else "ok"
                    kind = server.behaviour[key]
                    attempt = server.attempts[key] = server.attempts.get(key, 0) + 1
                if kind == "hang":
                    time.sleep(server.hang_s)
                    return
                if kind in ("429", "500") and attempt == 1:
                    return self.reply(int(kind), {"error": "try later"}, retry_after=kind == "429")
                text = "I'm sorry, I can't help with that." if kind == "refuse" else REPLY
                self.reply(200, {"choices": [{"message": {"role": "assistant", "content": text}}],
                                 "usage": {"completion_tokens": 31}})

            def reply(self, code, payload, retry_after=False):
                server.codes.append(code)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def check(self, path, headers, body) -> str | None:
        if path != "/v1/chat/completions":
            return f"wrong path {path}"
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return "missing or wrong API key"
        content = body["messages"][0]["content"]
        images = [p for p in content if p["type"] == "image_url"]
        texts = [p["text"] for p in content if p["type"] == "text"]
        if len(images) != self.n_images:
            return f"expected {self.n_images} images, got {len(images)}"
        for part in images:
            url = part["image_url"]["url"]
            if not url.startswith("data:image/jpeg;base64,"):
                return "image is not a JPEG data URL"
            jpeg = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
            if cv2.imdecode(jpeg, cv2.IMREAD_COLOR) is None:
                return "image does not decode"
        if len(texts) != 1 or not texts[0].startswith(self.prompt_start):
            return f"prompt missing: {texts}"
        return None

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_backend_retries_times_out_and_keeps_every_clip(tmp_path, monkeypatch):
    make_root(tmp_path)
    monkeypatch.setenv("REELSIFT_TEST_KEY", "sekrit-123")
    prompt = "Describe these {n_frames} frames of a {duration_s:.1f}-second clip in one paragraph."
    server = FakeVLMServer(["429", "500", "hang", "refuse"], n_images=3,
                           prompt_start="Describe these 3 frames of a 0.3-second clip", api_key="sekrit-123",
                           hang_s=2.0)
    try:
        cfg = CaptionConfig(
            backend="openai", prompt=prompt, n_frames=3, short_side=48, min_words=5,
            openai=OpenAICaptionerConfig(
                base_url=server.url, model="served-vlm", api_key_env="REELSIFT_TEST_KEY", concurrency=3,
                timeout_s=0.5, max_retries=2, backoff_s=0.05, max_backoff_s=0.2))
        t0 = time.monotonic()
        rows = run_local(cfg, tmp_path)
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert server.problems == []
    assert sorted(r["clip_id"] for r in rows) == ["c0", "c1", "c2", "c3", "c4"]  # no clip lost
    by_kind = {server.behaviour[k]: k for k in server.behaviour}
    assert set(by_kind) == {"429", "500", "hang", "refuse", "ok"}
    assert 429 in server.codes and 500 in server.codes
    assert server.attempts[by_kind["429"]] == 2 and server.attempts[by_kind["500"]] == 2
    assert server.attempts[by_kind["hang"]] == 3  # first try + max_retries
    status = sorted((r["status"], (r["error"] or "")[:20]) for r in rows)
    assert status == [("error", "gave up after 3 atte"), ("error", "refusal: \"I'm sorry,"),
                      ("ok", ""), ("ok", ""), ("ok", "")]
    hang = next(r for r in rows if r["status"] == "error" and r["error"].startswith("gave up"))
    assert "timeout" in hang["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["caption"].startswith("A small coloured square") and r["n_tokens"] == 31 for r in ok)
    assert all(r["model"] == "served-vlm" and r["untrained"] is False for r in rows)
    assert elapsed < 6  # three hanging attempts of 0.5 s, not the server's 2 s hang
    stored = Table(tmp_path, "captions").read().to_pandas().to_string()
    assert "sekrit" not in stored


def test_openai_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("REELSIFT_NO_SUCH_KEY", raising=False)
    cfg = CaptionConfig(backend="openai", openai=OpenAICaptionerConfig(api_key_env="REELSIFT_NO_SUCH_KEY"))
    with pytest.raises(ValueError, match="api_key_env: environment variable REELSIFT_NO_SUCH_KEY is not set"):
        CaptionClips(cfg)


# --------------------------------------------------------------------------------------------
# transformers: tiny random Qwen2.5-VL, saved and loaded by path, through Ray


def test_tiny_vlm_by_name_as_images(tmp_path):
    """`reelsift-tiny` (offline.yaml) with one image per frame instead of the video input."""
    make_root(tmp_path, n_clips=2, kept=2)
    cfg = CaptionConfig(n_frames=2, short_side=56, min_words=1,
                        transformers=TransformersCaptionerConfig(
                            model=TINY_VLM, device="cpu", video_input=False, max_new_tokens=8))
    rows = run_local(cfg, tmp_path)
    assert [r["clip_id"] for r in rows] == ["c0", "c1"]
    for r in rows:
        assert r["untrained"] is True and r["model"] == TINY_VLM and r["backend"] == "transformers"
        assert (r["status"] == "ok" and r["caption"]) or (r["status"] == "error" and r["error"])
        assert r["n_tokens"] is not None and 1 <= r["n_tokens"] <= 8


def test_named_random_size_builds_on_the_device_and_is_flagged(tmp_path):
    """`reelsift-random:<name>` (the GPU-node bench's 7B-sized captioner) through the same loader,
    here at the smoke size: random weights, rows flagged untrained, an unknown name says the known."""
    make_root(tmp_path, n_clips=1, kept=1)
    model = "reelsift-random:qwen2.5-vl-smoke"
    cfg = CaptionConfig(n_frames=2, short_side=56, min_words=1,
                        transformers=TransformersCaptionerConfig(model=model, device="cpu", max_new_tokens=4))
    rows = run_local(cfg, tmp_path)
    assert len(rows) == 1 and rows[0]["untrained"] is True and rows[0]["model"] == model
    with pytest.raises(ValueError, match="qwen2.5-vl-7b"):
        run_local(dataclasses.replace(cfg, transformers=TransformersCaptionerConfig(
            model="reelsift-random:nope", device="cpu")), tmp_path)


@pytest.fixture(scope="module")
def ray_cfg():
    import ray

    from curation.config import RayConfig

    yield RayConfig(num_cpus=2, object_store_mb=256, progress=False)
    ray.shutdown()


def test_tiny_vlm_from_folder_through_ray(tmp_path, ray_cfg, caplog):
    make_root(tmp_path)
    folder = build_tiny_vlm(tmp_path / "tiny-vlm", seed=1)
    res = Resources(num_cpus=0.5, batch_size=2, concurrency=1)
    cfg = CaptionConfig(n_frames=4, short_side=56, min_words=3, decode=res, captioner=res,
                        transformers=TransformersCaptionerConfig(
                            model=folder, device="cpu", max_new_tokens=12, batch_size=2))
    with caplog.at_level("WARNING", logger="reelsift"):
        sink = caption(SimpleNamespace(caption=cfg, ray=ray_cfg), tmp_path)
    assert "RANDOM weights" in caplog.text
    assert sink.written == 5
    rows = captions(tmp_path)
    assert [r["clip_id"] for r in rows] == ["c0", "c1", "c2", "c3", "c4"]  # kept clips only
    for r in rows:
        assert r["untrained"] is True and r["model"] == folder
        assert r["prompt_hash"] == prompt_hash(DEFAULT_PROMPT)
        # random weights babble: whatever comes out is either a cleaned caption or a reasoned error
        assert (r["status"] == "ok" and r["caption"] and r["error"] is None) or (
            r["status"] == "error" and r["caption"] is None and r["error"])
        assert r["latency_s"] > 0
    again = caption(SimpleNamespace(caption=cfg, ray=ray_cfg), tmp_path)  # resume: nothing left
    assert again.written == 0 and len(captions(tmp_path, history=True)) == 5


def test_status_counts_what_caption_takes_after_a_prompt_change(tmp_path, capsys):
    """`status --config` runs caption's own pending query: after a prompt change every kept clip
    is pending again, as `caption` would recaption it (status used to say `nothing pending`)."""
    from curation.cli import main
    from curation.config import CurateConfig
    from curation.status import stage_status

    kept = make_root(tmp_path)["kept"]
    cfg = CaptionConfig(backend="openai")
    Table(tmp_path, "captions").write(rows_to_table([
        dict(clip_id=c, backend="openai", model=cfg.model_name, prompt_hash=cfg.prompt_hash, status="ok",
             caption="a ball") for c in kept], CAPTIONS))

    def pending(c: CaptionConfig) -> int:
        rows = stage_status(tmp_path, CurateConfig(caption=c)).to_pylist()
        return {r["stage"]: r["pending"] for r in rows}["caption"]

    assert pending(cfg) == pending_clips(tmp_path, cfg).num_rows == 0
    new = replace(cfg, prompt="Describe the clip in one line.")
    assert pending(new) == pending_clips(tmp_path, new).num_rows == len(kept) == 5
    assert main(["status", "--root", str(tmp_path), "--set", "caption.backend=openai",
                 "--set", "caption.prompt=Describe the clip in one line."]) == 0
    assert "caption (5 clips)" in capsys.readouterr().out
    assert main(["status", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "? caption: what is pending depends on the config" in out and "nothing pending" not in out
