-- A workflow instance has one task instance per task: a rerun or a recover
-- reuses the row (its `run` goes up), a retry or a failover bumps its
-- attempt. Older databases may hold twins written by a bug; the newest of
-- each stays, the one a master loading the instance already took as
-- current (rows are loaded in id order, a later one replacing an earlier).
DELETE FROM task_instances
 WHERE EXISTS (SELECT 1 FROM task_instances newer
                WHERE newer.workflow_instance_id = task_instances.workflow_instance_id
                  AND newer.name = task_instances.name
                  AND newer.id > task_instances.id);
CREATE UNIQUE INDEX task_instances_name ON task_instances (workflow_instance_id, name);
