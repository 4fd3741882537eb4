-- name: unclassified-kernels
-- title: Kernels no classification rule recognised, longest first
-- answers: Which kernel names an import left in category 'other' (no shipped or --rules rule matched),
--   with their launches, summed time and share of all kernel time: the names to write rules for.
-- needs: kernels
-- param: top (INTEGER, default 20, min 1): names listed per input, longest summed time first
-- column: input: the input (trace) the row comes from
-- column: rank_by_time: 1 for the unclassified name with the most summed time, 2 for the next, ...
-- column: name: kernel name as recorded
-- column: kernels: launches of the kernel
-- column: ranks: ranks that ran it
-- column: time_s: summed duration, seconds
-- column: share: time_s / all kernel time of the input (every category)
-- column: unclassified_share: time_s / the input's unclassified kernel time
WITH totals AS (
    SELECT input, sum(duration_ns) AS all_ns, sum(duration_ns) FILTER (WHERE category = 'other') AS other_ns
    FROM kernels
    GROUP BY input
),
names AS (
    SELECT input, name, count(*) AS kernels, count(DISTINCT rank) AS ranks, sum(duration_ns) AS ns
    FROM kernels
    WHERE category = 'other'
    GROUP BY input, name
)
SELECT
    names.input,
    row_number() OVER (PARTITION BY names.input ORDER BY names.ns DESC, names.name) AS rank_by_time,
    names.name,
    names.kernels,
    names.ranks,
    names.ns / 1e9 AS time_s,
    names.ns / nullif(t.all_ns, 0) AS share,
    names.ns / nullif(t.other_ns, 0) AS unclassified_share
FROM names
JOIN totals AS t USING (input)
QUALIFY rank_by_time <= $top
ORDER BY names.input, rank_by_time
