-- Output parameters a task printed (${setValue(k=v)}), passed to its
-- downstream tasks; why its last attempt ended the way it did; the run of
-- its instance (rerun/recover) the current attempt belongs to, and the
-- retries used within that run.
ALTER TABLE task_instances ADD COLUMN outputs TEXT NOT NULL DEFAULT '{}';
ALTER TABLE task_instances ADD COLUMN message TEXT;
ALTER TABLE task_instances ADD COLUMN run INTEGER NOT NULL DEFAULT 1;
ALTER TABLE task_instances ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
