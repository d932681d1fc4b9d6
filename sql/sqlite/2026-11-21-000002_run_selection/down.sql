ALTER TABLE workflow_instances DROP COLUMN scope;
ALTER TABLE workflow_instances DROP COLUMN start_tasks;
