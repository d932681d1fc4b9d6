DROP INDEX workflow_instances_backfill;
ALTER TABLE workflow_instances DROP COLUMN backfill_id;
DROP TABLE backfills;
