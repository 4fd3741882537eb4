-- name: step-breakdown
-- title: Where a replayed step's time goes
-- answers: For each replay result, pool and phase: the mean time per step of each component
--   (attention core, attention projections, expert GEMMs, dense FFN or shared experts, small fixed
--   kernels (norms, router, quantisation, launch gaps), dispatch, combine, tensor-parallel
--   collectives, the straggler time of routing imbalance, embedding, LM head, MTP draft passes) and
--   its share of the step time.
--   The components add up to the step time. With by=step, one group of rows per replayed step.
-- needs: replay_steps
-- param: by (VARCHAR, default phase, one of phase|step): mean over the steps of a phase, or each step
-- column: input: the input (replay result) the row comes from
-- column: pool: all, prefill or decode (disaggregated pools)
-- column: phase: prefill or decode
-- column: step: replayed step (null when by=phase)
-- column: steps: replayed steps in the group
-- column: component: attention, attn_proj, expert_gemm, dense, fixed, dispatch, combine, tp_comm, straggler, embedding, lm_head, mtp
-- column: time_s: mean seconds per step spent in the component
-- column: share: time_s / the mean step time of the group
-- column: step_time_s: mean predicted step time of the group
WITH grouped AS (
    SELECT
        input, pool, phase,
        CASE WHEN $by = 'step' THEN step END AS step,
        count(*) AS steps,
        avg(step_time_s) AS step_time_s,
        avg(attention_s) AS attention,
        avg(attn_proj_s) AS attn_proj,
        avg(expert_gemm_s) AS expert_gemm,
        avg(dense_s) AS dense,
        avg(fixed_s) AS fixed,
        avg(dispatch_s) AS dispatch,
        avg(combine_s) AS combine,
        avg(tp_comm_s) AS tp_comm,
        avg(straggler_s) AS straggler,
        avg(embedding_s) AS embedding,
        avg(lm_head_s) AS lm_head,
        avg(mtp_s) AS mtp
    FROM replay_steps
    GROUP BY input, pool, phase, CASE WHEN $by = 'step' THEN step END
),
long AS (
    UNPIVOT grouped
    ON attention, attn_proj, expert_gemm, dense, fixed, dispatch, combine, tp_comm, straggler, embedding, lm_head, mtp
    INTO NAME component VALUE time_s
)
SELECT
    input, pool, phase, step, steps, component, time_s,
    time_s / nullif(step_time_s, 0) AS share,
    step_time_s
FROM long
ORDER BY
    input, pool, phase, step,
    list_position(
        [
            'attention', 'attn_proj', 'expert_gemm', 'dense', 'fixed', 'dispatch', 'combine', 'tp_comm',
            'straggler', 'embedding', 'lm_head', 'mtp'
        ],
        component
    )
