-- Caption length per captioner backend and model: words (whitespace-separated) and tokens of ok
-- captions, error count, mean latency. untrained = true: a randomly initialised captioner wrote
-- them (offline config), so they are noise. No rows until the caption stage has run.
WITH c AS (
    SELECT backend, model, status, n_tokens, latency_s, untrained,
           CASE WHEN status = 'ok' THEN len(regexp_split_to_array(trim(caption), '\s+')) END AS words
    FROM captions
)
SELECT backend, model,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       count(*) FILTER (WHERE status = 'error') AS errors,
       min(words) AS words_min,
       quantile_cont(words, 0.5) AS words_p50,
       avg(words) AS words_mean,
       max(words) AS words_max,
       avg(n_tokens) FILTER (WHERE status = 'ok') AS tokens_mean,
       avg(latency_s) AS latency_s_mean,
       bool_or(untrained) AS untrained
FROM c
GROUP BY backend, model
ORDER BY backend, model
