-- The curation funnel: how many videos/clips reach each step, and their hours.
-- videos: ok videos (hours = source duration). From `clips` on, rows are ok clips and hours are
-- source-clip seconds / 3600, so the steps compare like with like. `kept` and `sharded` have a
-- row per tier plus tier 'all'. `captioned` is 0 until the caption stage has run.
WITH ok_clips AS (
    SELECT clip_id, duration_s FROM clips WHERE status = 'ok'
),
kept AS (
    SELECT c.clip_id, c.duration_s, d.tier
    FROM decisions d JOIN ok_clips c USING (clip_id) WHERE d.keep
),
sharded AS (
    SELECT c.clip_id, c.duration_s, s.tier
    FROM ok_clips c
    JOIN (SELECT clip_id, any_value(tier) AS tier FROM shards WHERE status = 'ok' GROUP BY clip_id) s
    USING (clip_id)
),
steps AS (
    SELECT 1 AS step_order, 'videos' AS step, 'all' AS tier,
           count(*) AS n, coalesce(sum(duration_s), 0) / 3600 AS hours
    FROM videos WHERE status = 'ok'
    UNION ALL
    SELECT 2, 'clips', 'all', count(*), coalesce(sum(duration_s), 0) / 3600 FROM ok_clips
    UNION ALL
    SELECT 3, 'scored', 'all', count(*), coalesce(sum(duration_s), 0) / 3600 FROM ok_clips
    WHERE clip_id IN (SELECT clip_id FROM scores WHERE status = 'ok')
    UNION ALL
    SELECT 4, 'kept', 'all', count(*), coalesce(sum(duration_s), 0) / 3600 FROM kept
    UNION ALL
    SELECT 4, 'kept', tier, count(*), sum(duration_s) / 3600 FROM kept GROUP BY tier
    UNION ALL
    SELECT 5, 'captioned', 'all', count(*), coalesce(sum(duration_s), 0) / 3600 FROM kept
    WHERE clip_id IN (SELECT clip_id FROM captions WHERE status = 'ok')
    UNION ALL
    SELECT 6, 'sharded', 'all', count(*), coalesce(sum(duration_s), 0) / 3600 FROM sharded
    UNION ALL
    SELECT 6, 'sharded', tier, count(*), sum(duration_s) / 3600 FROM sharded GROUP BY tier
)
SELECT step, tier, n, hours
FROM steps
ORDER BY step_order, tier = 'all' DESC,
         TRY_CAST(regexp_extract(tier, '(\d+)', 1) AS INTEGER) DESC NULLS LAST, tier
