-- Why clips were dropped, grouped by `score@tier` (filter), `too_short` (split) or
-- `duplicate_of` (ingest: identical bytes; filter: a near-duplicate clip from dedup). `rejected`: clips dropped for good with this reason among theirs;
-- `kept_lower`: clips that missed this tier for this reason but were kept in a lower tier.
-- Hours are source-clip (or, for ingest, video) seconds / 3600. A clip failing several bounds
-- counts under each of its reasons. (A clip has each `score@tier` head at most once, so rows are
-- counted, not distinct clips: a distinct count would hold every clip id in memory.)
-- reason_head(r) is the macro every `reelsift sql` connection has (manifests/reasons.py).
WITH filter_reasons AS (
    SELECT d.clip_id, d.keep, c.duration_s, unnest(d.reasons) AS reason
    FROM decisions d JOIN clips c USING (clip_id)
),
heads AS (
    SELECT 'filter' AS stage, reason_head(reason) AS reason, clip_id, keep, duration_s
    FROM filter_reasons
    UNION ALL
    SELECT DISTINCT 'split', reason_head(reason), clip_id, false, duration_s
    FROM (SELECT clip_id, duration_s, unnest(reasons) AS reason FROM clips WHERE status = 'rejected')
    UNION ALL
    SELECT DISTINCT 'ingest', reason_head(reason), video_id, false, duration_s
    FROM (SELECT video_id, duration_s, unnest(reasons) AS reason FROM videos WHERE status = 'rejected')
)
SELECT stage, reason,
       count(*) FILTER (WHERE NOT keep) AS rejected,
       coalesce(sum(duration_s) FILTER (WHERE NOT keep), 0) / 3600 AS rejected_hours,
       count(*) FILTER (WHERE keep) AS kept_lower,
       coalesce(sum(duration_s) FILTER (WHERE keep), 0) / 3600 AS kept_lower_hours
FROM heads
GROUP BY stage, reason
ORDER BY CASE stage WHEN 'ingest' THEN 0 WHEN 'split' THEN 1 ELSE 2 END, rejected DESC, kept_lower DESC, reason
