//! The one diesel schema both backends share (see `sql/postgres` and
//! `sql/sqlite` for the two dialects of the same tables).

diesel::table! {
    projects (id) {
        id -> BigInt,
        name -> Text,
        description -> Text,
        params -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    workflows (id) {
        id -> BigInt,
        project_id -> BigInt,
        name -> Text,
        description -> Text,
        current_version -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    workflow_versions (id) {
        id -> BigInt,
        workflow_id -> BigInt,
        version -> Integer,
        description -> Text,
        params -> Text,
        failure_strategy -> Text,
        priority -> Text,
        worker_group -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    task_definitions (id) {
        id -> BigInt,
        workflow_id -> BigInt,
        name -> Text,
        version -> Integer,
        task_type -> Text,
        spec -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    workflow_version_tasks (workflow_version_id, task_definition_id) {
        workflow_version_id -> BigInt,
        task_definition_id -> BigInt,
    }
}

diesel::table! {
    workflow_edges (workflow_version_id, from_task, to_task) {
        workflow_version_id -> BigInt,
        from_task -> Text,
        to_task -> Text,
    }
}

diesel::table! {
    schedules (id) {
        id -> BigInt,
        workflow_id -> BigInt,
        trigger_kind -> Text,
        cron -> Nullable<Text>,
        timezone -> Nullable<Text>,
        interval_ms -> Nullable<BigInt>,
        repeat_times -> Nullable<Integer>,
        start_at -> Nullable<BigInt>,
        end_at -> Nullable<BigInt>,
        misfire -> Text,
        online -> Bool,
        last_fire -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    workflow_instances (id) {
        id -> BigInt,
        project_id -> BigInt,
        workflow_id -> BigInt,
        workflow_version -> Integer,
        workflow_name -> Text,
        state -> Text,
        command_kind -> Text,
        params -> Text,
        priority -> Text,
        worker_group -> Text,
        failure_strategy -> Text,
        schedule_time -> Nullable<BigInt>,
        owner -> Nullable<Text>,
        owner_epoch -> BigInt,
        run -> Integer,
        start_time -> Nullable<BigInt>,
        end_time -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
        start_tasks -> Text,
        scope -> Nullable<Text>,
        backfill_id -> Nullable<BigInt>,
        reason -> Nullable<Text>,
    }
}

diesel::table! {
    backfills (id) {
        id -> BigInt,
        workflow_id -> BigInt,
        workflow_version -> Integer,
        schedule_times -> Text,
        parallelism -> Integer,
        next_index -> Integer,
        state -> Text,
        params -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    task_instances (id) {
        id -> BigInt,
        workflow_instance_id -> BigInt,
        task_definition_id -> BigInt,
        name -> Text,
        task_type -> Text,
        state -> Text,
        attempt -> Integer,
        max_retries -> Integer,
        failovers -> Integer,
        priority -> Text,
        worker_group -> Text,
        host -> Nullable<Text>,
        exit_code -> Nullable<Integer>,
        retry_at -> Nullable<BigInt>,
        log_path -> Nullable<Text>,
        submit_time -> BigInt,
        start_time -> Nullable<BigInt>,
        end_time -> Nullable<BigInt>,
        updated_at -> BigInt,
        outputs -> Text,
        message -> Nullable<Text>,
        run -> Integer,
        retries -> Integer,
        kill_reason -> Nullable<Text>,
        branches -> Nullable<Text>,
        external_id -> Nullable<Text>,
    }
}

diesel::table! {
    commands (id) {
        id -> BigInt,
        kind -> Text,
        workflow_id -> BigInt,
        workflow_version -> Nullable<Integer>,
        workflow_instance_id -> Nullable<BigInt>,
        params -> Text,
        priority -> Nullable<Text>,
        worker_group -> Nullable<Text>,
        failure_strategy -> Nullable<Text>,
        start_tasks -> Text,
        scope -> Nullable<Text>,
        schedule_id -> Nullable<BigInt>,
        schedule_time -> Nullable<BigInt>,
        owner -> Nullable<Text>,
        claimed_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::joinable!(workflows -> projects (project_id));
diesel::joinable!(workflow_versions -> workflows (workflow_id));
diesel::joinable!(task_definitions -> workflows (workflow_id));
diesel::joinable!(workflow_version_tasks -> workflow_versions (workflow_version_id));
diesel::joinable!(workflow_version_tasks -> task_definitions (task_definition_id));
diesel::joinable!(task_instances -> workflow_instances (workflow_instance_id));

diesel::allow_tables_to_appear_in_same_query!(
    projects,
    workflows,
    workflow_versions,
    task_definitions,
    workflow_version_tasks,
    workflow_edges,
    schedules,
    workflow_instances,
    task_instances,
    commands,
    backfills,
);
