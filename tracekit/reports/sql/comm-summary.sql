-- name: comm-summary
-- title: Communication by operation and purpose
-- answers: How many bytes and how much time each kind of collective takes (dispatch, combine,
--   all-reduce, ...), summed over ranks and calls, with the bandwidth the timed calls achieved.
-- needs: comm
-- column: input: the input (trace) the row comes from
-- column: op: collective or point-to-point operation (all_to_all_single, all_reduce, ...)
-- column: purpose: what the calls were for (dispatch, combine, tp_allreduce, ...); empty when unknown
-- column: backend: nccl, gloo, deepep, ...; empty when unknown
-- column: calls: calls, counting each rank's call once
-- column: ranks: ranks that issued such calls
-- column: bytes_sent: bytes sent to other ranks, all calls and ranks
-- column: bytes_recv: bytes received from other ranks, all calls and ranks
-- column: bytes_share: bytes_sent / bytes sent by every call of the input
-- column: mean_bytes_sent: bytes_sent per call
-- column: timed_calls: calls with both start_ns and end_ns
-- column: time_s: summed duration (end_ns - start_ns) of the timed calls, seconds
-- column: mean_time_us: mean duration of a timed call, microseconds
-- column: send_gb_per_s: bytes_sent of the timed calls / their summed time, in GB/s (1e9 bytes)
SELECT
    input,
    op,
    coalesce(purpose, '') AS purpose,
    coalesce(backend, '') AS backend,
    count(*) AS calls,
    count(DISTINCT rank) AS ranks,
    sum(bytes_sent) AS bytes_sent,
    sum(bytes_recv) AS bytes_recv,
    sum(bytes_sent) / nullif(sum(sum(bytes_sent)) OVER (PARTITION BY input), 0) AS bytes_share,
    avg(bytes_sent) AS mean_bytes_sent,
    count(*) FILTER (WHERE start_ns IS NOT NULL AND end_ns IS NOT NULL) AS timed_calls,
    sum(end_ns - start_ns) / 1e9 AS time_s,
    avg(end_ns - start_ns) / 1e3 AS mean_time_us,
    sum(bytes_sent) FILTER (WHERE start_ns IS NOT NULL AND end_ns IS NOT NULL)
        / nullif(sum(end_ns - start_ns), 0) AS send_gb_per_s
FROM comm
GROUP BY input, op, coalesce(purpose, ''), coalesce(backend, '')
ORDER BY input, bytes_sent DESC, op, purpose, backend
