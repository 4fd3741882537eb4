-- name: predicted-vs-measured
-- title: A profiled run's measured kernel time beside the replay's prediction
-- answers: For each replay result that carries a GPU profile of the run (tracekit replay --profile,
--   tracekit calibrate --from-profile --report): per phase and component, the seconds the profile's
--   kernels took and the seconds the replay predicts, per profiled step and rank, and the error
--   (predicted / measured - 1). Components: attention, gemm (attention projections and dense
--   GEMMs), expert_gemm, elementwise (small memory-bound kernels), launch_gaps, dispatch, combine,
--   tp_comm; per step: edges (kernels outside any layer against embedding + LM head), step (the
--   span of the step's kernels against the predicted step time) and unmatched (profile kernels no
--   component models: measured only, never dropped). With by=layer or by=step, one group of rows
--   per decoder layer or per profiled step.
-- needs: replay_profile
-- param: by (VARCHAR, default component, one of component|layer|step): mean over the profiled steps and ranks, or per layer, or per step
-- column: input: the input (replay result) the row comes from
-- column: pool: as in replay_steps
-- column: phase: prefill or decode
-- column: layer: decoder layer (by=layer; null otherwise)
-- column: step: replayed step (by=step; null otherwise)
-- column: component: the component (see answers)
-- column: cells: (step, layer, rank) cells, or (step, rank) for the per-step components, behind the row
-- column: measured_s: seconds measured per profiled step and rank (by=layer: per step and rank in that layer)
-- column: predicted_s: seconds predicted for the same steps and ranks (null for unmatched)
-- column: error: predicted_s / measured_s - 1
-- column: cell_error_median: median over the cells of |predicted / measured - 1|
WITH rows AS (
    SELECT
        input, pool, phase, component, measured_s, predicted_s, error,
        CASE WHEN $by = 'layer' THEN layer END AS layer,
        CASE WHEN $by = 'step' THEN step END AS step,
        step AS cell_step, rank AS cell_rank
    FROM replay_profile
),
per AS (
    SELECT input, pool, phase, count(DISTINCT (step, rank)) AS n
    FROM replay_profile
    GROUP BY input, pool, phase
),
grouped AS (
    SELECT
        r.input, r.pool, r.phase, r.layer, r.step, r.component,
        count(*) AS cells,
        sum(r.measured_s) AS measured,
        CASE WHEN count(r.predicted_s) = 0 THEN NULL ELSE sum(r.predicted_s) END AS predicted,
        median(abs(r.error)) AS cell_error_median,
        CASE WHEN $by = 'step' THEN count(DISTINCT r.cell_rank) ELSE max(p.n) END AS n
    FROM rows AS r
    JOIN per AS p ON p.input = r.input AND p.pool = r.pool AND p.phase = r.phase
    GROUP BY r.input, r.pool, r.phase, r.layer, r.step, r.component
)
SELECT
    input, pool, phase, layer, step, component, cells,
    measured / n AS measured_s,
    predicted / n AS predicted_s,
    predicted / nullif(measured, 0) - 1 AS error,
    cell_error_median
FROM grouped
ORDER BY
    input, pool, phase, layer, step,
    list_position(
        [
            'attention', 'gemm', 'expert_gemm', 'elementwise', 'launch_gaps', 'dispatch', 'combine',
            'tp_comm', 'unmatched', 'edges', 'step'
        ],
        component
    )
