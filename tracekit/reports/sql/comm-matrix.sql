-- name: comm-matrix
-- title: Bytes between rank pairs
-- answers: How many bytes each rank sent to each other rank, from the per-peer byte lists the
--   collector records for each call (uneven all-to-alls, all-gathers, ...), and from the peer of
--   point-to-point sends recorded without a list. Calls with neither are left out (see
--   comm-summary for their totals). Filter by purpose (dispatch, combine) or op.
-- needs: comm
-- param: purpose (VARCHAR, default all): count only calls with this purpose (dispatch, combine, ...), or all
-- param: op (VARCHAR, default all): count only calls of this op (all_to_all_single, ...), or all
-- param: include_self (BOOLEAN, default false): also list the bytes a rank kept for itself
-- column: input: the input (trace) the row comes from
-- column: src_rank: global rank that sent
-- column: dst_rank: global rank that received
-- column: bytes: bytes sent from src_rank to dst_rank, all matching calls
-- column: calls: calls that moved a non-zero number of bytes on this pair
-- column: share: bytes / all bytes of the input's matrix
WITH peers AS (
    SELECT input, purpose, op, rank AS src_rank,
           unnest(group_ranks) AS dst_rank, unnest(send_bytes_per_peer) AS bytes
    FROM comm
    WHERE send_bytes_per_peer IS NOT NULL
    UNION ALL
    SELECT input, purpose, op, rank AS src_rank, peer AS dst_rank, bytes_sent AS bytes
    FROM comm
    WHERE send_bytes_per_peer IS NULL AND op = 'send' AND peer IS NOT NULL
),
pairs AS (
    SELECT input, src_rank, dst_rank, sum(bytes) AS bytes, count(*) FILTER (WHERE bytes > 0) AS calls
    FROM peers
    WHERE ($purpose = 'all' OR purpose = $purpose)
      AND ($op = 'all' OR op = $op)
      AND ($include_self OR src_rank <> dst_rank)
      AND dst_rank IS NOT NULL
    GROUP BY input, src_rank, dst_rank
)
SELECT input, src_rank, dst_rank, bytes, calls,
       bytes / nullif(sum(bytes) OVER (PARTITION BY input), 0) AS share
FROM pairs
ORDER BY input, src_rank, dst_rank
