DROP INDEX commands_one_restart;
ALTER TABLE task_instances DROP COLUMN external_id;
ALTER TABLE task_instances DROP COLUMN branches;
ALTER TABLE task_instances DROP COLUMN kill_reason;
ALTER TABLE workflow_instances DROP COLUMN reason;
