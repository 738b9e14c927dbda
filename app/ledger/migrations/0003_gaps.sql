-- Gaps a person accepted (`accountant ledger --accept-gap PARTITION:FROM-TO`):
-- the ledger stood at from_offset of a partition and resumed at to_offset,
-- because the closures in between were deleted before it wrote them
-- ('deleted') or the topic was recreated ('past_end'). Never written
-- otherwise: a gap nobody accepted stops the partition.
CREATE TABLE ledger_gaps (
    id              bigserial PRIMARY KEY,
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    from_offset     bigint NOT NULL,
    to_offset       bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('deleted', 'past_end')),
    accepted_by     text NOT NULL,
    accepted_at     timestamptz NOT NULL DEFAULT now()
);
