-- name: routing-check
-- title: Does expert_load agree with per-token routing?
-- answers: Counts tokens per (rank, step, layer, expert) from the routing table and compares them with
--   the expert_load table, per layer. A recorded trace has both and they must agree; a mismatch
--   means a truncated shard or a collector bug. Reads every routing row, streaming. Inputs without
--   routing rows (traces that record aggregates only) are left out.
-- needs: routing, expert_load
-- column: input: the input (trace) the row comes from
-- column: layer: decoder layer index
-- column: routing_assignments: token-expert assignments counted from routing
-- column: expert_load_tokens: the sum of expert_load.num_tokens
-- column: cells: (rank, step, expert) cells present in either table
-- column: mismatched_cells: cells whose two counts differ
WITH from_routing AS (
    SELECT input, rank, step, layer, expert, count(*) AS num_tokens
    FROM (SELECT input, rank, step, layer, unnest(expert_ids::SMALLINT[]) AS expert FROM routing)
    GROUP BY input, rank, step, layer, expert
),
from_load AS (
    SELECT input, rank, step, layer, expert, sum(num_tokens) AS num_tokens
    FROM expert_load
    WHERE input IN (SELECT DISTINCT input FROM routing)
    GROUP BY input, rank, step, layer, expert
    HAVING sum(num_tokens) > 0
)
SELECT
    input,
    layer,
    coalesce(sum(r.num_tokens), 0) AS routing_assignments,
    coalesce(sum(l.num_tokens), 0) AS expert_load_tokens,
    count(*) AS cells,
    count(*) FILTER (WHERE coalesce(r.num_tokens, 0) <> coalesce(l.num_tokens, 0)) AS mismatched_cells
FROM from_routing AS r
FULL OUTER JOIN from_load AS l USING (input, rank, step, layer, expert)
GROUP BY input, layer
ORDER BY input, layer
