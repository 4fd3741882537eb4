-- name: kernel-summary
-- title: GPU kernels by category (or by name)
-- answers: Where did the GPU time of an imported profile go: total time, count, mean and longest
--   kernel and share of kernel time, per category (expert_gemm, attention, collective, ...) or,
--   with by=name, per kernel name within its category.
-- needs: kernels
-- param: by (VARCHAR, default category, one of category|name): group by category, or by category and kernel name
-- column: input: the input (trace) the row comes from
-- column: category: kernel category
-- column: name: kernel name (null when grouping by category)
-- column: kernels: kernel launches
-- column: ranks: ranks that ran them
-- column: time_s: summed kernel duration, seconds (overlapping streams are counted in full)
-- column: share: time_s / all kernel time of the input
-- column: mean_us: mean duration, microseconds
-- column: max_us: longest launch, microseconds
SELECT
    input,
    category,
    CASE WHEN $by = 'name' THEN name END AS name,
    count(*) AS kernels,
    count(DISTINCT rank) AS ranks,
    sum(duration_ns) / 1e9 AS time_s,
    sum(duration_ns) / nullif(sum(sum(duration_ns)) OVER (PARTITION BY input), 0) AS share,
    avg(duration_ns) / 1e3 AS mean_us,
    max(duration_ns) / 1e3 AS max_us
FROM kernels
GROUP BY input, category, CASE WHEN $by = 'name' THEN name END
ORDER BY input, time_s DESC, category, name
