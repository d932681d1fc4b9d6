-- Sluice schema, PostgreSQL dialect. Keep in step with ../../sqlite and with
-- common/storage/src/schema.rs: one logical schema, two dialects.
-- Instants are BIGINT milliseconds since the Unix epoch (UTC) in both.

CREATE TABLE projects (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    params      TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE workflows (
    id              BIGSERIAL PRIMARY KEY,
    project_id      BIGINT NOT NULL REFERENCES projects (id),
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    current_version INTEGER NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE workflow_versions (
    id               BIGSERIAL PRIMARY KEY,
    workflow_id      BIGINT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version          INTEGER NOT NULL,
    description      TEXT NOT NULL,
    params           TEXT NOT NULL,
    failure_strategy TEXT NOT NULL,
    priority         TEXT NOT NULL,
    worker_group     TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    UNIQUE (workflow_id, version)
);

-- One row per version of a task; a workflow version lists the task versions
-- it is made of in workflow_version_tasks.
CREATE TABLE task_definitions (
    id          BIGSERIAL PRIMARY KEY,
    workflow_id BIGINT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    task_type   TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (workflow_id, name, version)
);

CREATE TABLE workflow_version_tasks (
    workflow_version_id BIGINT NOT NULL REFERENCES workflow_versions (id) ON DELETE CASCADE,
    task_definition_id  BIGINT NOT NULL REFERENCES task_definitions (id) ON DELETE CASCADE,
    PRIMARY KEY (workflow_version_id, task_definition_id)
);

CREATE TABLE workflow_edges (
    workflow_version_id BIGINT NOT NULL REFERENCES workflow_versions (id) ON DELETE CASCADE,
    from_task           TEXT NOT NULL,
    to_task             TEXT NOT NULL,
    PRIMARY KEY (workflow_version_id, from_task, to_task)
);

CREATE TABLE schedules (
    id           BIGSERIAL PRIMARY KEY,
    workflow_id  BIGINT NOT NULL UNIQUE REFERENCES workflows (id) ON DELETE CASCADE,
    trigger_kind TEXT NOT NULL,
    cron         TEXT,
    timezone     TEXT,
    interval_ms  BIGINT,
    repeat_times INTEGER,
    start_at     BIGINT,
    end_at       BIGINT,
    misfire      TEXT NOT NULL,
    online       BOOLEAN NOT NULL DEFAULT FALSE,
    last_fire    BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE workflow_instances (
    id               BIGSERIAL PRIMARY KEY,
    project_id       BIGINT NOT NULL,
    workflow_id      BIGINT NOT NULL,
    workflow_version INTEGER NOT NULL,
    workflow_name    TEXT NOT NULL,
    state            TEXT NOT NULL,
    command_kind     TEXT NOT NULL,
    params           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    worker_group     TEXT NOT NULL,
    failure_strategy TEXT NOT NULL,
    schedule_time    BIGINT,
    owner            TEXT,
    -- Bumped on every adoption; a write carrying an older epoch is refused.
    owner_epoch      BIGINT NOT NULL DEFAULT 1,
    run              INTEGER NOT NULL DEFAULT 1,
    start_time       BIGINT,
    end_time         BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX workflow_instances_project_state ON workflow_instances (project_id, state, id DESC);
CREATE INDEX workflow_instances_workflow ON workflow_instances (workflow_id, id DESC);
CREATE INDEX workflow_instances_state ON workflow_instances (state, id DESC);
CREATE INDEX workflow_instances_owner ON workflow_instances (owner)
    WHERE state NOT IN ('success', 'failure', 'stopped');

CREATE TABLE task_instances (
    id                   BIGSERIAL PRIMARY KEY,
    workflow_instance_id BIGINT NOT NULL REFERENCES workflow_instances (id) ON DELETE CASCADE,
    task_definition_id   BIGINT NOT NULL,
    name                 TEXT NOT NULL,
    task_type            TEXT NOT NULL,
    state                TEXT NOT NULL,
    attempt              INTEGER NOT NULL DEFAULT 1,
    max_retries          INTEGER NOT NULL DEFAULT 0,
    failovers            INTEGER NOT NULL DEFAULT 0,
    priority             TEXT NOT NULL,
    worker_group         TEXT NOT NULL,
    host                 TEXT,
    exit_code            INTEGER,
    retry_at             BIGINT,
    log_path             TEXT,
    submit_time          BIGINT NOT NULL,
    start_time           BIGINT,
    end_time             BIGINT,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX task_instances_workflow_instance ON task_instances (workflow_instance_id, id);

CREATE TABLE commands (
    id                   BIGSERIAL PRIMARY KEY,
    kind                 TEXT NOT NULL,
    workflow_id          BIGINT NOT NULL,
    workflow_version     INTEGER,
    workflow_instance_id BIGINT,
    params               TEXT NOT NULL,
    priority             TEXT,
    worker_group         TEXT,
    failure_strategy     TEXT,
    start_tasks          TEXT NOT NULL DEFAULT '[]',
    scope                TEXT,
    schedule_id          BIGINT,
    schedule_time        BIGINT,
    owner                TEXT,
    claimed_at           BIGINT,
    created_at           BIGINT NOT NULL
);
-- A (schedule, fire time) pair becomes at most one command, whichever master
-- fires it: a leadership change can never fire a time twice.
CREATE UNIQUE INDEX commands_schedule_fire ON commands (schedule_id, schedule_time);
CREATE INDEX commands_unclaimed ON commands (id) WHERE owner IS NULL;
CREATE INDEX commands_owner ON commands (owner) WHERE owner IS NOT NULL;
