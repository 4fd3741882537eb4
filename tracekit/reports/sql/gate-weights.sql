-- name: gate-weights
-- title: Router confidence per layer, from per-token routing
-- answers: How peaked are the router's choices in each MoE layer: the largest gate weight a token
--   gives one expert, and the sum of its top-k weights (1.0 when renormalised). Reads the routing
--   table (one row per token), streaming; traces without gate weights give null weights.
-- needs: routing
-- column: input: the input (trace) the row comes from
-- column: layer: decoder layer index
-- column: tokens: routing rows (tokens, all steps and ranks)
-- column: steps: distinct steps
-- column: mean_max_weight: mean over tokens of the largest gate weight
-- column: p10_max_weight: 10th percentile of the largest gate weight (approximate)
-- column: p50_max_weight: median of the largest gate weight (approximate)
-- column: mean_weight_sum: mean over tokens of the sum of the top-k gate weights
SELECT
    input,
    layer,
    count(*) AS tokens,
    count(DISTINCT step) AS steps,
    avg(list_max(gate_weights::FLOAT[])) AS mean_max_weight,
    approx_quantile(list_max(gate_weights::FLOAT[]), 0.1) AS p10_max_weight,
    approx_quantile(list_max(gate_weights::FLOAT[]), 0.5) AS p50_max_weight,
    avg(list_sum(gate_weights::FLOAT[])) AS mean_weight_sum
FROM routing
GROUP BY input, layer
ORDER BY input, layer
