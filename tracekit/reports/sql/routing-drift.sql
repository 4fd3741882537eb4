-- name: routing-drift
-- title: How the hot set of experts changes over steps
-- answers: For each MoE layer and step: which experts were hottest in that step, how much that hot
--   set overlaps the previous step's (Jaccard) and the hot set of the whole trace, and what share of
--   the step's tokens the whole-trace hot set received. Stable routing keeps these near 1; drifting
--   routing (new topics, prefill vs decode) lowers them, and a static placement tuned on early steps
--   then balances later steps poorly. Ties go to the lowest expert id, so when a step has few tokens
--   (small decode batches) group steps into windows with window=N.
-- needs: expert_load
-- param: top (INTEGER, default 8, min 1): size of the hot set
-- param: window (INTEGER, default 1, min 1): steps per window (window w covers steps w*N .. w*N+N-1)
-- column: input: the input (trace) the row comes from
-- column: layer: decoder layer index
-- column: step: forward step (the first step of the window)
-- column: num_tokens: token-expert assignments in the step (window) and layer, all ranks
-- column: hot_experts: the step's hot set (at most top experts with tokens, sorted by id)
-- column: jaccard_prev: |hot ∩ previous step's hot| / |hot ∪ previous step's hot| (null on the first step)
-- column: overlap_overall: |hot ∩ whole-trace hot set| / |whole-trace hot set|
-- column: overall_hot_share: share of the step's assignments that went to the whole-trace hot set
WITH per_step AS (
    SELECT input, layer, step // $window * $window AS step, expert, sum(num_tokens) AS num_tokens
    FROM expert_load
    GROUP BY input, layer, step // $window * $window, expert
),
step_hot AS (
    SELECT input, layer, step, list(expert ORDER BY expert) AS hot_experts
    FROM (
        SELECT *, row_number() OVER (PARTITION BY input, layer, step ORDER BY num_tokens DESC, expert) AS r
        FROM per_step WHERE num_tokens > 0
    )
    WHERE r <= $top
    GROUP BY input, layer, step
),
overall_hot_rows AS (
    SELECT input, layer, expert
    FROM (SELECT input, layer, expert, sum(num_tokens) AS num_tokens FROM per_step GROUP BY ALL)
    WHERE num_tokens > 0
    QUALIFY row_number() OVER (PARTITION BY input, layer ORDER BY num_tokens DESC, expert) <= $top
),
overall_hot AS (
    SELECT input, layer, list(expert ORDER BY expert) AS hot FROM overall_hot_rows GROUP BY input, layer
),
step_total AS (
    SELECT p.input, p.layer, p.step,
           sum(p.num_tokens) AS num_tokens,
           sum(p.num_tokens) FILTER (WHERE o.expert IS NOT NULL) AS hot_tokens
    FROM per_step AS p
    LEFT JOIN overall_hot_rows AS o USING (input, layer, expert)
    GROUP BY p.input, p.layer, p.step
)
SELECT
    t.input,
    t.layer,
    t.step,
    t.num_tokens,
    h.hot_experts,
    CASE WHEN lag(h.hot_experts) OVER w IS NOT NULL THEN
        len(list_intersect(h.hot_experts, lag(h.hot_experts) OVER w))
            / len(list_distinct(list_concat(h.hot_experts, lag(h.hot_experts) OVER w)))
    END AS jaccard_prev,
    len(list_intersect(h.hot_experts, o.hot)) / len(o.hot) AS overlap_overall,
    coalesce(t.hot_tokens, 0) / nullif(t.num_tokens, 0) AS overall_hot_share
FROM step_total AS t
JOIN step_hot AS h USING (input, layer, step)
JOIN overall_hot AS o USING (input, layer)
WINDOW w AS (PARTITION BY t.input, t.layer ORDER BY t.step)
ORDER BY t.input, t.layer, t.step
