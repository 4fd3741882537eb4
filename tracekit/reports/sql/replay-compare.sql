-- name: replay-compare
-- title: Replays side by side
-- answers: Several replay results of the same workload (other hardware, EP degree, precision,
--   placement, overlap) next to each other: deployment, throughput per GPU and per user, step time,
--   its largest parts, the dominant bound, and the speed-up over a baseline input.
-- needs: replay_run, replay_summary
-- param: baseline (VARCHAR, default first): input to compare against (its name), or first: the first input given
-- column: input: the input (replay result) the row comes from
-- column: hw: hardware preset
-- column: model: target model
-- column: num_gpus: GPUs of the pool
-- column: ep: expert-parallel degree
-- column: tp: attention tensor-parallel degree
-- column: impl: dispatch/combine implementation
-- column: tbo: two-batch overlap
-- column: precision_experts: routed expert weight precision
-- column: placement: contiguous or the placement file
-- column: pool: all, prefill or decode
-- column: phase: prefill or decode
-- column: step_time_s: mean predicted step time
-- column: tokens_per_s_per_gpu: throughput per GPU (decode: output tokens/s; prefill: prompt tokens/s)
-- column: tokens_per_s_per_user: decode: 1 / TPOT (null for prefill)
-- column: comm_share: (dispatch + combine + tp_comm) / step time
-- column: straggler_share: straggler time / step time
-- column: bound: dominant bound
-- column: measured_time_s: mean measured step time when comparable (else null)
-- column: speedup: tokens_per_s_per_gpu / the baseline's for the same pool and phase
WITH rows AS (
    SELECT
        s.input, r.hw, r.model, s.num_gpus, r.ep, r.tp, r.impl, r.tbo, r.precision_experts, r.placement,
        s.pool, s.phase, s.step_time_s, s.tokens_per_s_per_gpu, s.tokens_per_s_per_user,
        (s.dispatch_s + s.combine_s + s.tp_comm_s) / nullif(s.step_time_s, 0) AS comm_share,
        s.straggler_s / nullif(s.step_time_s, 0) AS straggler_share,
        s.bound, s.measured_time_s, i.position
    FROM replay_summary AS s
    JOIN replay_run AS r USING (input)
    JOIN inputs AS i USING (input)
),
base AS (
    SELECT pool, phase, tokens_per_s_per_gpu AS base_tps
    FROM rows
    WHERE input = CASE
        WHEN $baseline = 'first' THEN (SELECT min_by(input, position) FROM rows)
        ELSE $baseline
    END
),
checked AS (
    SELECT CASE
        WHEN $baseline <> 'first' AND $baseline NOT IN (SELECT input FROM rows)
        THEN error('baseline ' || $baseline || ' is not one of the replay inputs: '
                   || (SELECT string_agg(DISTINCT input, ', ' ORDER BY input) FROM rows))
    END AS ok
)
SELECT
    rows.* EXCLUDE (position),
    rows.tokens_per_s_per_gpu / nullif(base.base_tps, 0) AS speedup
FROM rows
CROSS JOIN checked
LEFT JOIN base USING (pool, phase)
WHERE checked.ok IS NULL
ORDER BY rows.position, rows.pool, rows.phase
