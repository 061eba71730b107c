-- Every input that failed, with its readable message: videos that could not be probed, clips
-- that could not be split, scored, captioned, aligned or cut into a shard. Empty on a clean run.
SELECT source, key, path, error, created_at FROM (
    SELECT 0 AS o, 'videos' AS source, video_id AS key, path, error, created_at
    FROM videos WHERE status = 'error'
    UNION ALL
    SELECT 1, 'clips', clip_id, path, error, created_at FROM clips WHERE status = 'error'
    UNION ALL
    SELECT 2, 'scores', s.clip_id, c.path, s.error, s.created_at
    FROM scores s LEFT JOIN clips c USING (clip_id) WHERE s.status = 'error'
    UNION ALL
    SELECT 3, 'captions', k.clip_id, c.path, k.error, k.created_at
    FROM captions k LEFT JOIN clips c USING (clip_id) WHERE k.status = 'error'
    UNION ALL
    SELECT 4, 'alignment', a.clip_id, c.path, a.error, a.created_at
    FROM alignment a LEFT JOIN clips c USING (clip_id) WHERE a.status = 'error'
    UNION ALL
    SELECT 5, 'shards', s.clip_id, c.path, s.error, s.created_at
    FROM shards s LEFT JOIN clips c USING (clip_id) WHERE s.status = 'error'
)
ORDER BY o, created_at, key
