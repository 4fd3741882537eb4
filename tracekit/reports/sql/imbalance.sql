-- name: imbalance
-- title: Load imbalance per layer, over experts and over EP ranks
-- answers: How skewed is routing in each MoE layer? Over experts: max/mean and the Gini coefficient
--   of the tokens each expert received. Over the ranks of an expert-parallel deployment with
--   contiguous placement (expert e on rank e // ceil(num_experts / ep)): max/mean of the rank loads
--   and the excess (max - mean) / mean that the slowest rank adds, over the whole trace and per step.
-- needs: expert_load, inputs
-- param: ep (INTEGER, default 0, min 0): expert-parallel ranks the experts are spread over; 0: each
--   trace's own EP (the manifest's parallel.ep_size, else the ranks of its placement table; a trace
--   recorded on one GPU is shown at EP 8, one HGX node)
-- column: input: the input (trace) the row comes from
-- column: layer: decoder layer index
-- column: num_experts: routed experts of the model (experts with no token count as zero)
-- column: num_tokens: token-expert assignments of the layer, all steps and ranks
-- column: hot_expert: the expert with the most tokens (lowest id on ties)
-- column: expert_max_over_mean: tokens of the hottest expert / mean tokens per expert
-- column: expert_gini: Gini coefficient of tokens per expert (0 = even, near 1 = one expert takes all)
-- column: ep: EP ranks used for this input (the ep parameter, or the trace's own EP)
-- column: rank_max_over_mean: tokens of the busiest EP rank / mean per rank, whole trace
-- column: rank_excess: (max - mean) / mean of the EP rank loads, whole trace
-- column: step_rank_excess_mean: the same excess computed per step, averaged over steps
-- column: step_rank_excess_max: the largest per-step excess
WITH placement_ranks AS (
    SELECT input, count(DISTINCT rank) AS ranks FROM placement GROUP BY input
),
ep_of AS (
    SELECT i.input,
           CASE WHEN $ep > 0 THEN $ep
                WHEN coalesce(i.ep_size, 1) > 1 THEN i.ep_size
                WHEN coalesce(p.ranks, 1) > 1 THEN p.ranks
                ELSE 8 END AS ep
    FROM inputs AS i LEFT JOIN placement_ranks AS p USING (input)
),
expert_total AS (
    SELECT input, layer, expert, sum(num_tokens) AS num_tokens
    FROM expert_load
    GROUP BY input, layer, expert
),
expert_ranked AS (
    -- Gini over all num_experts experts: experts without tokens are zeros that sort first, so the
    -- j-th smallest non-zero load has position (num_experts - nonzero) + j. On ties the lowest
    -- expert id sorts last, so the last position is the hot expert.
    SELECT
        t.input, t.layer, t.expert, t.num_tokens, i.num_experts,
        i.num_experts - count(*) OVER (PARTITION BY t.input, t.layer)
            + row_number() OVER (PARTITION BY t.input, t.layer ORDER BY t.num_tokens, t.expert DESC) AS pos
    FROM expert_total AS t JOIN inputs AS i USING (input)
    WHERE t.num_tokens > 0
),
expert_stats AS (
    SELECT
        input, layer,
        any_value(num_experts) AS num_experts,
        sum(num_tokens) AS num_tokens,
        max(num_tokens) AS max_tokens,
        arg_max(expert, pos) AS hot_expert,
        2.0 * sum(pos * num_tokens) / (any_value(num_experts) * sum(num_tokens))
            - (any_value(num_experts) + 1.0) / any_value(num_experts) AS expert_gini
    FROM expert_ranked
    GROUP BY input, layer
),
rank_step AS (
    SELECT l.input, l.layer, l.step, e.ep,
           l.expert // ((i.num_experts + e.ep - 1) // e.ep) AS ep_rank,
           sum(l.num_tokens) AS num_tokens
    FROM expert_load AS l JOIN inputs AS i USING (input) JOIN ep_of AS e USING (input)
    GROUP BY ALL
),
step_excess AS (
    SELECT input, layer, step,
           max(num_tokens) * any_value(ep) / sum(num_tokens) - 1.0 AS excess
    FROM rank_step
    GROUP BY input, layer, step
    HAVING sum(num_tokens) > 0
),
rank_total AS (
    SELECT input, layer, any_value(ep) AS ep,
           max(num_tokens) * any_value(ep) / sum(num_tokens) AS rank_max_over_mean
    FROM (SELECT input, layer, ep, ep_rank, sum(num_tokens) AS num_tokens FROM rank_step GROUP BY ALL)
    GROUP BY input, layer
    HAVING sum(num_tokens) > 0
),
excess AS (
    SELECT input, layer, avg(excess) AS step_rank_excess_mean, max(excess) AS step_rank_excess_max
    FROM step_excess GROUP BY input, layer
)
SELECT
    s.input,
    s.layer,
    s.num_experts,
    s.num_tokens,
    s.hot_expert,
    s.max_tokens * s.num_experts / s.num_tokens AS expert_max_over_mean,
    s.expert_gini,
    r.ep,
    r.rank_max_over_mean,
    r.rank_max_over_mean - 1.0 AS rank_excess,
    x.step_rank_excess_mean,
    x.step_rank_excess_max
FROM expert_stats AS s
JOIN rank_total AS r USING (input, layer)
JOIN excess AS x USING (input, layer)
ORDER BY s.input, s.layer
