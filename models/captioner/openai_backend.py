"""The `openai` captioner backend: any OpenAI-compatible chat-completions server with image
inputs (vLLM, SGLang). Frames go as base64 JPEG data URLs; a thread pool; retries with backoff.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from models.captioner.common import CaptionInput, RawCaption
from models.captioner.config import OpenAICaptionerConfig


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


def _jpeg_data_url(frame: np.ndarray, quality: int) -> str:
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class OpenAICaptioner:
    """Chat-completions client: a thread pool of `concurrency` requests, retries with backoff."""

    needs_frames = True
    untrained = False

    def __init__(self, cfg: OpenAICaptionerConfig, key: str = "caption.openai"):
        self.cfg = cfg
        self.name = cfg.model
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise ValueError(f"{key}.api_key_env: environment variable {cfg.api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="caption-openai")

    def caption(self, items: list[CaptionInput], prompts: list[str]) -> list[RawCaption]:
        return list(self.pool.map(self.one, items, prompts))

    def one(self, item: CaptionInput, prompt: str) -> RawCaption:
        cfg = self.cfg
        images = [
            {"type": "image_url", "image_url": {"url": _jpeg_data_url(f, cfg.jpeg_quality)}}
            for f in item.frames
        ]
        body = json.dumps(
            {
                "model": cfg.model,
                "messages": [{"role": "user", "content": [*images, {"type": "text", "text": prompt}]}],
                "max_tokens": cfg.max_tokens,
                "temperature": cfg.temperature,
            }
        ).encode()
        t0 = time.monotonic()
        reason = ""
        for attempt in range(cfg.max_retries + 1):
            try:
                payload = self._post(body)
            except _Retry as exc:
                reason = str(exc)
                if attempt < cfg.max_retries:
                    backoff = cfg.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                    time.sleep(min(cfg.max_backoff_s, exc.wait_s if exc.wait_s is not None else backoff))
                continue
            except ValueError as exc:  # not retried: 4xx other than 429, malformed response
                return RawCaption(None, latency_s=time.monotonic() - t0, error=str(exc))
            try:
                content = payload["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                return RawCaption(
                    None,
                    latency_s=time.monotonic() - t0,
                    error=f"response has no choices[0].message.content: {str(payload)[:200]}",
                )
            if isinstance(content, list):  # some servers return content parts
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            usage = payload.get("usage") or {}
            return RawCaption(
                content, n_tokens=usage.get("completion_tokens"), latency_s=time.monotonic() - t0
            )
        return RawCaption(
            None,
            latency_s=time.monotonic() - t0,
            error=f"gave up after {cfg.max_retries + 1} attempts: {reason}",
        )

    def _post(self, body: bytes) -> dict:
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            if exc.code == 429 or exc.code >= 500:
                after = exc.headers.get("Retry-After") if exc.headers else None
                wait = float(after) if after and after.replace(".", "", 1).isdigit() else None
                raise _Retry(f"HTTP {exc.code}: {detail}", wait) from exc
            raise ValueError(f"HTTP {exc.code} (not retried): {detail}") from exc
        except TimeoutError as exc:
            raise _Retry(f"no response within timeout_s={self.cfg.timeout_s}") from exc
        except urllib.error.URLError as exc:  # connect refused / connect timeout
            raise _Retry(f"cannot reach {self.url}: {exc.reason}") from exc
        except (ConnectionError, http.client.HTTPException) as exc:  # dropped mid-response
            raise _Retry(f"connection lost: {exc!r}") from exc
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"response is not JSON: {raw[:200]!r}") from exc
