-- name: expert-load
-- title: Hot experts per layer
-- answers: Which experts receive the most tokens in each MoE layer (all steps and ranks summed),
--   what share of the layer's token-expert assignments each takes, and how far above an even share.
-- needs: expert_load, steps, inputs
-- param: top (INTEGER, default 8, min 1): experts listed per layer, hottest first
-- param: phase (VARCHAR, default all, one of all|prefill|decode|mixed): count only steps of this phase
-- column: input: the input (trace) the row comes from
-- column: layer: decoder layer index
-- column: hot_rank: 1 for the hottest expert of the layer, 2 for the next, ...
-- column: expert: logical expert id
-- column: num_tokens: tokens routed to the expert (a token counts once for each expert it picks)
-- column: share: num_tokens / all token-expert assignments of the layer
-- column: vs_mean: num_tokens / the mean per expert of the layer (1.0 = an even share; every expert of the model counts in the mean)
WITH load AS (
    SELECT l.input, l.layer, l.expert, sum(l.num_tokens) AS num_tokens
    FROM expert_load AS l
    WHERE $phase = 'all'
       OR EXISTS (
           SELECT 1 FROM steps AS s
           WHERE s.input = l.input AND s.rank = l.rank AND s.step = l.step AND s.phase = $phase
       )
    GROUP BY l.input, l.layer, l.expert
),
layer_total AS (
    SELECT input, layer, sum(num_tokens) AS total FROM load GROUP BY input, layer
)
SELECT
    load.input,
    load.layer,
    row_number() OVER (PARTITION BY load.input, load.layer ORDER BY load.num_tokens DESC, load.expert) AS hot_rank,
    load.expert,
    load.num_tokens,
    load.num_tokens / nullif(t.total, 0) AS share,
    load.num_tokens * i.num_experts / nullif(t.total, 0) AS vs_mean
FROM load
JOIN layer_total AS t USING (input, layer)
JOIN inputs AS i USING (input)
QUALIFY hot_rank <= $top
ORDER BY load.input, load.layer, hot_rank
