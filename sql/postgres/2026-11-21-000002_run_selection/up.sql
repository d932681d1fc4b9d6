-- Which tasks a run includes (start from chosen tasks with a scope): kept on
-- the instance so that whichever master drives it runs the same selection.
ALTER TABLE workflow_instances ADD COLUMN start_tasks TEXT NOT NULL DEFAULT '[]';
ALTER TABLE workflow_instances ADD COLUMN scope TEXT;
