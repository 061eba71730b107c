"""align stage: caption/clip CLIP cosine from the stored clip embedding, and the policy on it.

With the tiny random CLIP, a clip whose stored embedding IS the text embedding of caption A
scores 1.0 for caption A and clearly less for an unrelated (hallucinated) caption B.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pyarrow as pa
import pytest

from curation.config import AlignConfig
from curation.stages.align import align, pending_alignments
from filters.aesthetic import AestheticConfig
from filters.config import Bound, FilterConfig, TierConfig
from filters.policy import decide, pre_align_filter
from manifests.configtools import ConfigError, build
from manifests.db import connect
from manifests.schemas import CAPTIONS, SCORES
from manifests.store import Table, rows_to_table
from models.clip import ClipEncoder

CLIP = AestheticConfig(clip_model="reelsift-tiny", random_init=True, device="cpu", seed=0)
A = "A red ball rolls slowly across a wooden floor in soft daylight."
B = "A crowd of people dances at a neon-lit night club while the camera shakes."  # hallucinated
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def cap(clip_id, text, model="vlm-1", minutes=0, status="ok"):
    return dict(clip_id=clip_id, caption=text if status == "ok" else None, backend="openai", model=model,
                prompt_hash="p1", status=status, error=None if status == "ok" else "HTTP 500",
                created_at=T0 + timedelta(minutes=minutes))


@pytest.fixture()
def root(tmp_path):
    emb_a = ClipEncoder(CLIP.clip_model, None, seed=CLIP.seed).encode_text([A])[0]  # (D,) unit norm
    scores = [dict(clip_id=c, status="ok", clip_model=m, clip_embedding=emb_a.tolist())
              for c, m in [("c0", "reelsift-tiny"), ("c1", "reelsift-tiny"), ("c2", "ViT-L-14")]]
    Table(tmp_path, "scores").write(rows_to_table(scores, SCORES))
    captions = [
        cap("c0", B, model="vlm-0", minutes=0),  # older caption of c0: superseded
        cap("c0", A, model="vlm-1", minutes=1),  # newest OK caption of c0: matches its frames
        cap("c0", None, model="vlm-2", minutes=2, status="error"),  # newer error: ignored
        cap("c1", B),  # hallucinated
        cap("c2", A),  # embedding by another CLIP
        cap("c3", A),  # never scored
        cap("c4", None, status="error"),  # no caption: nothing to align
    ]
    Table(tmp_path, "captions").write(rows_to_table(captions, CAPTIONS))
    return tmp_path


@pytest.fixture(scope="module")
def ray_cfg():
    import ray

    from curation.config import RayConfig

    yield RayConfig(num_cpus=2, object_store_mb=256, progress=False)
    ray.shutdown()


def test_align_scores_and_policy_drops_hallucinated_caption(root, ray_cfg):
    todo = pending_alignments(root, CLIP.clip_model).to_pylist()
    assert [(r["clip_id"], r["caption_model"]) for r in todo] == [
        ("c0", "vlm-1"), ("c1", "vlm-1"), ("c2", "vlm-1"), ("c3", "vlm-1")]

    cfg = SimpleNamespace(align=AlignConfig(), score=SimpleNamespace(aesthetic=CLIP), ray=ray_cfg)
    sink = align(cfg, root)
    assert sink.written == 4
    stored = connect(root).sql("SELECT * FROM alignment").to_arrow_table().to_pylist()
    rows = {r["clip_id"]: r for r in stored}
    assert set(rows) == {"c0", "c1", "c2", "c3"}
    assert rows["c0"]["status"] == "ok" and rows["c0"]["clip_score"] == pytest.approx(1.0, abs=1e-4)
    assert rows["c1"]["status"] == "ok" and rows["c1"]["clip_score"] < 0.8
    assert rows["c0"]["untrained"] is True and rows["c0"]["clip_model"] == "reelsift-tiny"
    assert rows["c2"]["status"] == "error" and "'ViT-L-14'" in rows["c2"]["error"]
    assert rows["c3"]["status"] == "error" and "no clip_embedding" in rows["c3"]["error"]

    # the policy on the stored value: the hallucinated caption drops its clip, with a reason
    policy = FilterConfig(tiers={"256p": TierConfig(bounds={"clip_score": Bound(min=0.9)})})
    kept = decide(256, {"clip_score": rows["c0"]["clip_score"]}, policy)
    dropped = decide(256, {"clip_score": rows["c1"]["clip_score"]}, policy)
    assert kept.keep and kept.tier == "256p"
    assert not dropped.keep and dropped.reasons == [f"clip_score={rows['c1']['clip_score']:.4g}<0.9@256p"]
    assert not decide(256, {"clip_score": None}, policy).keep  # error rows leave it missing
    # before captions exist, the pre-align pass must not reject on the missing score
    assert decide(256, {}, pre_align_filter(policy)).keep

    # resume: nothing left; a newer ok caption (another model) is aligned again
    assert pending_alignments(root, CLIP.clip_model).num_rows == 0
    Table(root, "captions").write(rows_to_table([cap("c1", A, model="vlm-3", minutes=5)], CAPTIONS))
    todo = pending_alignments(root, CLIP.clip_model).to_pylist()
    assert [(r["clip_id"], r["caption_model"]) for r in todo] == [("c1", "vlm-3")]


def test_align_config_names_key():
    with pytest.raises(ConfigError, match="align.batch_size"):
        build(AlignConfig, {"batch_size": 0})
    with pytest.raises(ConfigError, match="align.device"):
        build(AlignConfig, {"device": "tpu"})


def test_alignment_schema_is_a_table():
    from manifests.schemas import TABLES

    schema, key, newest = TABLES["alignment"]
    assert key == "clip_id" and newest
    assert schema.field("clip_score").type == pa.float32()  # cosine, -1..1
