-- A backfill: one run per schedule time, at most `parallelism` at once
-- (1 = serial), created in order by whichever master scans commands.
CREATE TABLE backfills (
    id               BIGSERIAL PRIMARY KEY,
    workflow_id      BIGINT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    workflow_version INTEGER NOT NULL,
    schedule_times   TEXT NOT NULL,
    parallelism      INTEGER NOT NULL,
    next_index       INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL,
    params           TEXT NOT NULL DEFAULT '{}',
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX backfills_running ON backfills (id) WHERE state = 'running';
ALTER TABLE workflow_instances ADD COLUMN backfill_id BIGINT;
CREATE INDEX workflow_instances_backfill ON workflow_instances (backfill_id) WHERE backfill_id IS NOT NULL;
