//! A task's parameters and body resolved for one attempt: the layers of
//! parameters (project, workflow, upstream outputs, task, run) and every
//! `${...}` / `$[...]` in its body, as `sluice-params` defines them.

use sluice_domain::*;

/// What resolution needs to know about the run besides the task.
pub(crate) struct RunContext {
    pub project: String,
    pub project_params: Params,
    /// The zone schedule times and time expressions are read in: the
    /// workflow's cron schedule's, else UTC.
    pub timezone: sluice_params::Tz,
    /// `host:port` of this master: where workers report.
    pub master: String,
}

/// The dispatch of `task`'s current attempt, or why its parameters cannot
/// be resolved.
pub(crate) fn dispatch(
    ctx: &RunContext,
    instance: &WorkflowInstance,
    def: &WorkflowDefinition,
    spec: &TaskSpec,
    task: &TaskInstance,
    upstream: Params,
) -> Result<TaskDispatch, sluice_params::ExprError> {
    let time = sluice_params::Context {
        schedule_time: instance.schedule_time.unwrap_or(instance.created_at),
        timezone: ctx.timezone,
        project: ctx.project.clone(),
        workflow: def.name.clone(),
        workflow_instance_id: instance.id.get(),
        task_instance_id: Some(task.id.get()),
    };
    let layers = sluice_params::Layers {
        project: ctx.project_params.clone(),
        workflow: def.params.clone(),
        upstream,
        task: spec.params.clone(),
        run: instance.params.clone(),
    };
    let params = sluice_params::resolve(&layers, &time)?;
    let mut body = spec.body.clone();
    for value in body.values_mut() {
        if let serde_json::Value::String(text) = value {
            *text = sluice_params::substitute(text, &params, &time)?;
        }
    }
    Ok(TaskDispatch {
        workflow_instance_id: instance.id,
        task_instance_id: task.id,
        attempt: task.attempt,
        master: ctx.master.clone(),
        project: ctx.project.clone(),
        workflow: def.name.clone(),
        task: spec.name.clone(),
        task_type: spec.task_type.clone(),
        body,
        params,
        timeout: spec.timeout,
        timeout_strategy: spec.timeout_strategy,
    })
}
