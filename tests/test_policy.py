"""The tier policy: highest passing tier, every failed bound as a reason."""

from __future__ import annotations

from filters.config import FilterConfig
from filters.policy import decide
from manifests.configtools import build

CFG = build(
    FilterConfig,
    {
        "tiers": {
            "720p": {
                "min_source_short_side": 720,
                "short_side": 720,
                "bounds": {"motion_mean": {"min": 0.5, "max": 10}, "ocr_area": {"max": 0.02}},
            },
            "256p": {
                "min_source_short_side": 256,
                "short_side": 256,
                "bounds": {"motion_mean": {"min": 0.3}, "ocr_area": {"max": 0.05}},
            },
        }
    },
    "filter",
)


def test_highest_passing_tier_wins():
    d = decide(1080, {"motion_mean": 2.0, "ocr_area": 0.0}, CFG)
    assert (d.tier, d.keep, d.reasons) == ("720p", True, [])


def test_small_source_never_reaches_720p():
    d = decide(360, {"motion_mean": 2.0, "ocr_area": 0.0}, CFG)
    assert d.tier == "256p" and d.reasons == ["short_side=360<720@720p"]


def test_every_failed_bound_is_a_reason_with_its_value():
    d = decide(1080, {"motion_mean": 0.1, "ocr_area": 0.083}, CFG)
    assert not d.keep and d.tier is None
    assert d.reasons == [
        "motion_mean=0.1<0.5@720p",
        "ocr_area=0.083>0.02@720p",
        "motion_mean=0.1<0.3@256p",
        "ocr_area=0.083>0.05@256p",
    ]


def test_motion_band_rejects_shaky_and_missing_scores_are_reasons():
    assert "motion_mean=12<=10" not in decide(1080, {"motion_mean": 12, "ocr_area": 0}, CFG).reasons
    assert decide(1080, {"motion_mean": 12, "ocr_area": 0}, CFG).reasons[0] == "motion_mean=12>10@720p"
    assert "ocr_area=missing@256p" in decide(300, {"motion_mean": 1}, CFG).reasons
