DROP INDEX task_instances_name;
