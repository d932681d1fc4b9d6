ALTER TABLE task_instances DROP COLUMN retries;
ALTER TABLE task_instances DROP COLUMN run;
ALTER TABLE task_instances DROP COLUMN message;
ALTER TABLE task_instances DROP COLUMN outputs;
