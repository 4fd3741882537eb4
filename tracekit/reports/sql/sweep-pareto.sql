-- name: sweep-pareto
-- title: Pareto frontier of a sweep: throughput per GPU against per user
-- answers: Which deployments of a sweep are not beaten on both tokens/s per GPU and tokens/s per
--   user, per hardware preset, from the fastest per user to the highest throughput per GPU.
-- needs: sweep_pareto
-- column: input: the input (sweep result) the row comes from
-- column: hw: hardware preset
-- column: ep: expert-parallel degree
-- column: tp: attention tensor-parallel degree
-- column: batch_per_gpu: decode batch per GPU
-- column: precision_experts: routed expert weight precision
-- column: impl: dispatch/combine implementation
-- column: tbo: two-batch overlap
-- column: num_gpus: GPUs
-- column: tokens_per_s_per_user: 1 / TPOT
-- column: tokens_per_s_per_gpu: output tokens/s per GPU
-- column: step_time_s: predicted decode step time
-- column: bound: dominant bound
SELECT
    input, hw, ep, tp, batch_per_gpu, precision_experts, impl, tbo, num_gpus,
    tokens_per_s_per_user, tokens_per_s_per_gpu, step_time_s, bound
FROM sweep_pareto
ORDER BY input, hw, tokens_per_s_per_user DESC, tokens_per_s_per_gpu, ep, batch_per_gpu
