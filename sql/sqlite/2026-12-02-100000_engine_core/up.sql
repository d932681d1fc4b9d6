-- Why an instance ended when no task says so (its definition was gone, it
-- was stopped before it started).
ALTER TABLE workflow_instances ADD COLUMN reason TEXT;
-- An operator's kill of the current attempt, kept until the attempt ends so
-- that a master taking the instance over sends it again.
ALTER TABLE task_instances ADD COLUMN kill_reason TEXT;
-- The branches a conditions or switch task took (JSON list); NULL: all.
ALTER TABLE task_instances ADD COLUMN branches TEXT;
-- An id the task's own system gave the attempt (a YARN application id).
ALTER TABLE task_instances ADD COLUMN external_id TEXT;
-- At most one restart (rerun, recover, resume) waits per instance: the
-- database refuses a second instead of an API check racing a scan. Older
-- databases may hold such twins; the oldest of each stays.
DELETE FROM commands
 WHERE kind IN ('rerun', 'recover_failure', 'resume')
   AND EXISTS (SELECT 1 FROM commands older
                WHERE older.workflow_instance_id = commands.workflow_instance_id
                  AND older.kind IN ('rerun', 'recover_failure', 'resume')
                  AND older.id < commands.id);
CREATE UNIQUE INDEX commands_one_restart ON commands (workflow_instance_id)
 WHERE kind IN ('rerun', 'recover_failure', 'resume');
