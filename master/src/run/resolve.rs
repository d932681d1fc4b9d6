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

/// The answer to a worker that took an attempt's queue entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fetched {
    Found(std::sync::Arc<TaskDispatch>),
    /// Not to be run, and why.
    Stale(String),
}

impl super::RunMachine {
    /// The task instance id of `node`, once it has a row.
    pub fn task_id(&self, node: TaskNode) -> Option<TaskInstanceId> {
        self.row(node).map(|r| r.id)
    }

    /// The dispatch of `task`'s attempt `attempt`, resolved again, while it
    /// is the current attempt and in flight. An attempt taken while the
    /// instance stops still gets its dispatch: it reports running and is
    /// killed then, as it would be had it started before the stop.
    pub fn fetch(&self, task: TaskInstanceId, attempt: u32) -> Fetched {
        let Some(node) = self.node_of(task) else {
            return Fetched::Stale(format!("task instance {task} is not part of workflow instance {}", self.instance().id));
        };
        let row = self.row(node).expect("an indexed task has a row");
        if row.attempt != attempt {
            return Fetched::Stale(format!("attempt {attempt} is not current: task instance {task} is at attempt {}", row.attempt));
        }
        match row.state {
            TaskState::Dispatched | TaskState::Running => match self.entry(node) {
                Ok(entry) => Fetched::Found(entry.dispatch),
                Err(error) => Fetched::Stale(format!("the task's parameters cannot be resolved: {error}")),
            },
            state => Fetched::Stale(format!("task instance {task} is {state}")),
        }
    }
}
