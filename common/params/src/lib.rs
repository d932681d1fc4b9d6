//! Parameters of a task run: precedence between the places they come from,
//! the built-in `${system.*}` values, time expressions relative to the
//! schedule time (`$[yyyyMMdd-1]`, hera's `${zdt.addDay(-1).format(..)}`),
//! substitution into scripts, and output parameters a task prints
//! (`${setValue(key=value)}`). Pure functions: the master resolves before it
//! dispatches, so an expression that cannot be resolved fails the task
//! before it starts, with a message naming the expression.

pub mod cron;
mod expr;
mod format;
mod time;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
pub use chrono_tz::Tz;

pub use crate::time::Zoned;

pub type Params = BTreeMap<String, String>;

/// An expression that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve `{expression}`: {message}")]
pub struct ExprError {
    pub expression: String,
    pub message: String,
}

impl ExprError {
    pub fn new(expression: &str, message: impl Into<String>) -> Self {
        ExprError { expression: expression.to_owned(), message: message.into() }
    }
}

/// What a task run's parameters are resolved against.
#[derive(Debug, Clone)]
pub struct Context {
    /// The run's schedule time (its fire time, or the backfill date, or the
    /// start time of a manual run), seen in the schedule's time zone.
    pub schedule_time: DateTime<Utc>,
    pub timezone: Tz,
    pub project: String,
    pub workflow: String,
    pub workflow_instance_id: i64,
    pub task_instance_id: Option<i64>,
}

impl Context {
    fn zoned(&self) -> Zoned {
        Zoned::new(self.schedule_time, self.timezone)
    }

    /// The `${system.*}` values.
    pub fn builtin(&self, name: &str) -> Option<String> {
        let at = self.zoned();
        let fmt = |z: Zoned, p: &str| format::format(&z.local(), p).expect("fixed patterns are valid");
        Some(match name {
            // The business date is the day before the schedule time: a
            // daily run at 02:30 processes yesterday's data.
            "system.biz.date" => fmt(at.add_days(-1)?, "yyyyMMdd"),
            "system.biz.curdate" => fmt(at, "yyyyMMdd"),
            "system.datetime" => fmt(at, "yyyyMMddHHmmss"),
            "system.workflow.instance.id" => self.workflow_instance_id.to_string(),
            "system.task.instance.id" => self.task_instance_id?.to_string(),
            "system.project.name" => self.project.clone(),
            "system.workflow.name" => self.workflow.clone(),
            _ => return None,
        })
    }
}

/// The places parameters come from, lowest precedence first.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub project: Params,
    pub workflow: Params,
    /// Output parameters of the task's upstream tasks.
    pub upstream: Params,
    /// The task's own parameters.
    pub task: Params,
    /// Given when the run was started.
    pub run: Params,
}

impl Layers {
    /// run-time > task-local > upstream outputs > workflow > project.
    pub fn merged(&self) -> Params {
        let mut out = self.project.clone();
        for layer in [&self.workflow, &self.upstream, &self.task, &self.run] {
            out.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }
}

/// Resolves every parameter value (values may use built-ins, time
/// expressions and other parameters) and returns the final map.
pub fn resolve(layers: &Layers, ctx: &Context) -> Result<Params, ExprError> {
    let merged = layers.merged();
    let mut resolved = Params::new();
    for name in merged.keys() {
        let mut chain = Vec::new();
        resolve_one(name, &merged, ctx, &mut resolved, &mut chain)?;
    }
    Ok(resolved)
}

fn resolve_one(name: &str, merged: &Params, ctx: &Context, done: &mut Params, chain: &mut Vec<String>) -> Result<String, ExprError> {
    if let Some(v) = done.get(name) {
        return Ok(v.clone());
    }
    if let Some(start) = chain.iter().position(|n| n == name) {
        return Err(cycle_error(&chain[start..]));
    }
    chain.push(name.to_owned());
    let raw = merged[name].clone();
    let value = substitute_with(&raw, ctx, &mut |reference: &str, chain_ctx: &Context| {
        if merged.contains_key(reference) {
            resolve_one(reference, merged, chain_ctx, done, chain).map(Some)
        } else {
            Ok(None)
        }
    })?;
    chain.pop();
    done.insert(name.to_owned(), value.clone());
    Ok(value)
}

/// `cycle` is the names on the loop, each once, in order of reference.
fn cycle_error(cycle: &[String]) -> ExprError {
    let first = &cycle[0];
    let names: Vec<&str> = cycle.iter().chain(std::iter::once(first)).map(String::as_str).collect();
    ExprError::new(&format!("${{{first}}}"), format!("parameters refer to each other in a cycle: {}", names.join(" -> ")))
}

/// A parameter whose value no run can resolve, found before any run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ParamError {
    /// The parameter at fault: the one whose value holds the bad
    /// expression, or the first of a cycle.
    pub name: String,
    /// The parameters on the cycle, in order of reference; empty when the
    /// fault is an expression.
    pub cycle: Vec<String>,
    pub error: ExprError,
}

/// A context for checking what does not depend on the run. Whether an
/// expression resolves never depends on the schedule time or the ids, only
/// its value does (dates far from now aside: the range check is the same
/// 260,000 years either way).
fn probe() -> Context {
    Context {
        schedule_time: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000),
        timezone: Tz::UTC,
        project: String::new(),
        workflow: String::new(),
        workflow_instance_id: 0,
        task_instance_id: Some(0),
    }
}

/// Checks, before any run, what fails every run: a malformed time
/// expression (`$[foo+1]`, `${zdt.explode()}`), an unknown built-in
/// (`${system.nope}`), or parameters of `params` that refer to each other
/// in a cycle. A `${name}` that `params` does not define is no mistake:
/// it may be an upstream task's output, a parameter given when the run
/// starts, a project parameter or the script's own variable, and at run
/// time it is left alone when it is none of them.
pub fn check(params: &Params) -> Result<(), ParamError> {
    let ctx = probe();
    let mut refers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in params {
        let mut names = Vec::new();
        substitute_with(value, &ctx, &mut |reference: &str, _: &Context| {
            if params.contains_key(reference) {
                names.push(reference.to_owned());
            }
            Ok(None)
        })
        .map_err(|error| ParamError { name: name.clone(), cycle: Vec::new(), error })?;
        refers.insert(name, names);
    }
    // Depth-first over the references; `on_path` holds the names being
    // resolved, as `resolve` would.
    fn visit<'a>(name: &'a str, refers: &'a BTreeMap<&str, Vec<String>>, on_path: &mut Vec<String>, done: &mut BTreeSet<&'a str>) -> Result<(), ParamError> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(start) = on_path.iter().position(|n| n == name) {
            let cycle = &on_path[start..];
            return Err(ParamError { name: cycle[0].clone(), cycle: cycle.to_vec(), error: cycle_error(cycle) });
        }
        on_path.push(name.to_owned());
        for next in &refers[name] {
            visit(next, refers, on_path, done)?;
        }
        on_path.pop();
        done.insert(name);
        Ok(())
    }
    let mut done = BTreeSet::new();
    for name in refers.keys() {
        visit(name, &refers, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

/// Checks `text` (a script, any value substituted at run time) for what
/// fails every run, as [`check`] does for parameters.
pub fn check_text(text: &str) -> Result<(), ExprError> {
    substitute_with(text, &probe(), &mut |_: &str, _: &Context| Ok(None)).map(drop)
}

/// Replaces, in `text` (a script, a parameter value):
/// - `${name}` by the parameter `name`, when there is one (any other
///   `${...}` is left alone: it is the script's own, e.g. a shell variable);
/// - `${system.*}` by the built-in (an unknown `system.` name is an error);
/// - `${zdt...}` and `$[...]` by the time expression's value.
///
/// `${setValue(...)}` is left for the task to print.
pub fn substitute(text: &str, params: &Params, ctx: &Context) -> Result<String, ExprError> {
    substitute_with(text, ctx, &mut |name: &str, _: &Context| Ok(params.get(name).cloned()))
}

type Lookup<'a> = dyn FnMut(&str, &Context) -> Result<Option<String>, ExprError> + 'a;

fn substitute_with(text: &str, ctx: &Context, lookup: &mut Lookup<'_>) -> Result<String, ExprError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let (open, close) = if tail.starts_with("${") {
            ('{', '}')
        } else if tail.starts_with("$[") {
            ('[', ']')
        } else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = closing(tail, open, close) else {
            // An unclosed `$[` is a broken expression; an unclosed `${` is
            // left to the script.
            if open == '[' {
                return Err(ExprError::new(tail.lines().next().unwrap_or(tail), "missing `]`"));
            }
            out.push_str(tail);
            rest = "";
            break;
        };
        let inner = &tail[2..end];
        let whole = &tail[..=end];
        let replacement = if open == '[' {
            Some(expr::dollar_bracket(inner, &ctx.zoned())?)
        } else {
            let name = inner.trim();
            if name.starts_with("zdt") && (name == "zdt" || name[3..].starts_with('.')) {
                Some(expr::zdt(name, &ctx.zoned())?)
            } else if let Some(system) = name.strip_prefix("system.").map(|_| name) {
                Some(ctx.builtin(system).ok_or_else(|| {
                    ExprError::new(whole, "unknown built-in; known: system.biz.date, system.biz.curdate, system.datetime, system.workflow.instance.id, system.task.instance.id, system.project.name, system.workflow.name")
                })?)
            } else if name.starts_with("setValue(") {
                None
            } else {
                lookup(name, ctx)?
            }
        };
        match replacement {
            Some(value) => out.push_str(&value),
            None => out.push_str(whole),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the bracket closing the one at `text[1]`, honouring nesting.
fn closing(text: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices().skip(1) {
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Output parameters in a line a task printed: every
/// `${setValue(key=value)}` in it (the last one wins per key).
pub fn output_params(line: &str, into: &mut Params) {
    let mut rest = line;
    while let Some(start) = rest.find("${setValue(") {
        let after = &rest[start + "${setValue(".len()..];
        let Some(end) = after.find(")}") else { return };
        if let Some((key, value)) = after[..end].split_once('=') {
            let key = key.trim();
            if !key.is_empty() {
                into.insert(key.to_owned(), value.trim().to_owned());
            }
        }
        rest = &after[end + 2..];
    }
}

/// Parses an IANA time-zone name, naming it when unknown.
pub fn timezone(name: &str) -> Result<Tz, ExprError> {
    name.parse::<Tz>().map_err(|_| ExprError::new(name, "unknown time zone; use an IANA name such as UTC or Asia/Shanghai"))
}

#[cfg(test)]
mod tests;
