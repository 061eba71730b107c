"""The "Clips" section: a few clips per group (each kept tier, each rejection reason), each a
card with its poster, a preview that plays on hover or click, its scores, reasons and caption."""

from __future__ import annotations

from pathlib import Path

from curation.report.html import e, fmt, hours, n_of
from curation.report.media import CLIP_FIELDS, VIDEO_JOIN, write_all_media
from filters.config import FilterConfig
from manifests.schemas import SCORES
from manifests.sqltext import literal

MAIN_SCORES = ("motion_mean", "ocr_area", "quality_sharpness", "aesthetic_mean")
UNTRAINED_SCORES = ("aesthetic_mean", "aesthetic_min")  # random weights under offline.yaml

# One pass over clips with a single join to decisions (each reference to the newest-wins
# `decisions` view costs a hash aggregate over every clip), then one hash aggregate: each group's
# size, hours and first clip ids. Each row unnests to the groups it belongs to; a rejected clip
# counts once per score that failed, whatever the number of tiers it failed at.
_GROUPS_SQL = """
    SELECT g.kind, g.grp, any_value(g.tier) AS tier, count(*) AS n, sum(duration_s) AS seconds,
           min_by(clip_id, clip_id, {limit}) AS ids
    FROM (
        SELECT c.clip_id, c.duration_s, unnest(CASE
            WHEN c.status = 'rejected' THEN list_transform(
                list_distinct(list_transform(c.reasons, lambda r: split_part(r, '=', 1))),
                lambda n: {{'kind': 1, 'grp': 'rejected at split: ' || n, 'tier': NULL::VARCHAR}})
            WHEN d.clip_id IS NULL THEN [{{'kind': 3, 'grp': 'not decided yet', 'tier': NULL::VARCHAR}}]
            WHEN d.keep THEN [{{'kind': 0, 'grp': 'kept @' || d.tier, 'tier': d.tier}}]
            ELSE list_transform(
                list_distinct(list_transform(d.reasons, lambda r: split_part(r, '=', 1))),
                lambda n: {{'kind': 2, 'grp': 'rejected by filter: ' || n, 'tier': NULL::VARCHAR}})
        END) AS g
        FROM clips c LEFT JOIN decisions d ON d.clip_id = c.clip_id AND c.status = 'ok'
        WHERE c.status IN ('ok', 'rejected')
    )
    GROUP BY g.kind, g.grp
"""


def _history_newest(table: str, mine: str) -> str:
    """The view `table`'s rows for the given clips: the newest of each clip's history rows. The
    clip filter comes first, so a handful of rows are ranked, not every key of the table. (A
    shown clip is visible in `clips`, so no superseded split error is among its rows.)"""
    return (f"(SELECT * FROM {table}_history WHERE {mine} "
            "QUALIFY created_at = max(created_at) OVER (PARTITION BY clip_id))")


def clip_details(con, clip_ids: list[str], shown: list[str], ranked: tuple[str, ...] = ()) -> dict[str, dict]:
    """Media fields, decision, caption and `shown` scores of the given clips, by clip id.
    `ranked`: tables whose view the caller has already made a table of its newest rows (the
    report's snapshot; every column read here kept): their rows are read from it."""
    if not clip_ids:
        return {}
    # Each table is cut down to the given clips first (a literal list: the Parquet scan filters on
    # it), so a few rows are read and ranked, whatever the size of the run.
    mine = f"clip_id IN ({', '.join(literal(i) for i in sorted(set(clip_ids)))})"

    def _newest_of(table: str, mine: str) -> str:
        return f"(SELECT * FROM {table} WHERE {mine})" if table in ranked else _history_newest(table, mine)

    rows = con.sql(f"""
        WITH c AS {_newest_of("clips", mine)},
             videos AS (SELECT * FROM videos WHERE video_id IN (SELECT video_id FROM c))
        SELECT {CLIP_FIELDS}, c.duration_s, c.reasons AS clip_reasons, d.keep, d.reasons,
               coalesce(cap.caption, sh.caption) AS caption, cap.untrained AS caption_untrained
               {"".join(f', s."{c}"' for c in shown)}
        FROM c
        {VIDEO_JOIN}
        LEFT JOIN {_newest_of("decisions", mine)} d ON d.clip_id = c.clip_id
        LEFT JOIN (SELECT * FROM {_newest_of("scores", mine)} WHERE status = 'ok') s ON s.clip_id = c.clip_id
        LEFT JOIN (SELECT clip_id, any_value(caption) AS caption, bool_or(untrained) AS untrained
                   FROM {_newest_of("captions", mine)} WHERE status = 'ok' GROUP BY clip_id) cap
               ON cap.clip_id = c.clip_id
        LEFT JOIN (SELECT clip_id, any_value(caption) AS caption FROM {_newest_of("shards", mine)}
                   GROUP BY clip_id) sh
               ON sh.clip_id = c.clip_id
    """).to_arrow_table().to_pylist()
    return {r["clip_id"]: r for r in rows}


def clip_groups(con, out: Path, filt: FilterConfig, max_thumbs: int, max_previews: int,
                untrained: bool, ranked: tuple[str, ...] = ()) -> str:
    """Cards of the first `max_thumbs` clips (by id) of each group; groups and counts come from SQL.
    Previews (a decode and an encode each, the first time) go to the first `max_previews` cards
    taken in turn from each group; the others show their still. `ranked`: see `clip_details`."""
    groups = con.sql(_GROUPS_SQL.format(limit=max(max_thumbs, 1))).to_arrow_table().to_pylist()
    if not groups:
        return "<p>No clips yet.</p>"
    shown = [c for c in MAIN_SCORES if c in SCORES.names]
    for g in groups:
        g["ids"] = sorted(g["ids"])[:max_thumbs]
    by_id = clip_details(con, [i for g in groups for i in g["ids"]], shown, ranked)
    tier_rank = {t: i for i, (t, _) in enumerate(filt.ordered())}
    rank = lambda g: (g["kind"], tier_rank.get(g["tier"], len(tier_rank)), -g["n"], g["grp"])  # noqa: E731
    order = sorted(groups, key=rank)
    in_turn = [g["ids"][k] for k in range(max_thumbs) for g in order if k < len(g["ids"])]
    previews = set(list(dict.fromkeys(in_turn))[:max_previews])
    media = write_all_media(list(by_id.values()), out, previews)
    parts = [f"<p>Up to {max_thumbs} clips per group (the first by clip id). Hover or click a clip to play "
             f"its preview, the first seconds, muted ({len(previews)} clips have one, the others a still). "
             "Rejected clips are grouped by each score that failed (at every tier), so a clip can appear "
             "more than once. Red: why the clip was dropped; grey: why a kept clip missed the tiers above "
             "its own."
             + (" Aesthetic scores marked * are UNTRAINED (random weights)." if untrained else "") + "</p>"]
    for g in order:
        cards = "".join(card(by_id[i], media[i], shown) for i in g["ids"])
        size = f"{n_of(g['n'], 'clip')}, {hours(g['seconds'] / 3600)}"
        parts.append(f"<h3>{e(g['grp'])} <small>({size})</small></h3><div class=grid>{cards}</div>")
    return "\n".join(parts)


def player(clip_id: str, media: dict) -> str:
    """The poster, and the preview over it (played by report.js on hover or click)."""
    if media["preview"]:
        poster = f' poster="{e(media["thumb"])}"' if media["thumb"] else ""
        return (f'<video class=preview src="{e(media["preview"])}"{poster} muted loop playsinline '
                f'preload=none aria-label="preview of clip {e(clip_id)}"></video>')
    if media["thumb"]:
        return f'<img src="{e(media["thumb"])}" alt="clip {e(clip_id)}">'
    return f"<div class=noimg>{e(media['error'])}</div>"


def card(c: dict, media: dict, shown: list[str]) -> str:
    scores = " · ".join(f"{e(k)} {fmt(c[k])}" + ("*" if k in UNTRAINED_SCORES else "")
                        for k in shown if c.get(k) is not None)
    reasons = (c["clip_reasons"] or []) + (c["reasons"] or [])
    why = "missed" if c["keep"] else "reasons"
    caption = e(c["caption"]) if c["caption"] else "<i>no caption</i>"
    if c["caption"] and c["caption_untrained"]:
        caption += " <span class=warn-inline>(UNTRAINED captioner)</span>"
    return (f"<figure class=card>{player(c['clip_id'], media)}<figcaption><code>{e(c['clip_id'])}</code> "
            f"{fmt(c['duration_s'])}s {c['width']}×{c['height']}"
            f"<div class=scores>{scores or 'not scored'}</div>"
            + (f"<div class={why}>{e(', '.join(reasons))}</div>" if reasons else "")
            + f"<div class=caption>{caption}</div>"
            "</figcaption></figure>")
