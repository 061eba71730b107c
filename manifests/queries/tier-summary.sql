-- Per tier of the current decisions: clips kept and their hours, how many are sharded (and the
-- hours written, at the tier's frame rate), and the mean of the main scores of the kept clips.
-- aesthetic_untrained = true: the aesthetic scores came from random weights and mean nothing.
WITH kept AS (
    SELECT d.clip_id, d.tier, c.duration_s
    FROM decisions d JOIN clips c USING (clip_id) WHERE d.keep
),
sh AS (
    SELECT clip_id, any_value(n_frames / fps) AS out_s FROM shards WHERE status = 'ok' GROUP BY clip_id
)
SELECT k.tier,
       count(*) AS kept,
       sum(k.duration_s) / 3600 AS hours,
       count(sh.clip_id) AS sharded,
       coalesce(sum(sh.out_s), 0) / 3600 AS sharded_hours,
       avg(s.motion_mean) AS motion_mean,
       avg(s.ocr_area) AS ocr_area,
       avg(s.quality_sharpness) AS sharpness,
       avg(s.aesthetic_mean) AS aesthetic_mean,
       bool_or(s.aesthetic_untrained) AS aesthetic_untrained
FROM kept k
LEFT JOIN scores s ON s.clip_id = k.clip_id AND s.status = 'ok'
LEFT JOIN sh ON sh.clip_id = k.clip_id
GROUP BY k.tier
ORDER BY TRY_CAST(regexp_extract(k.tier, '(\d+)', 1) AS INTEGER) DESC NULLS LAST, k.tier
