//! Task types that run a user's script with an interpreter: `shell` (bash)
//! and `python` (python3).

use std::path::Path;

use serde_json::{Map, Value};
use sluice_domain::{TaskDispatch, TaskSpec};

use crate::{ProcessSpec, TaskPlugin};

/// A script written to a file in the working directory and run with an
/// interpreter, as the user would run it by hand (`bash script.sh`): no
/// `set -e` or other wrapping, so a script behaves the same here as in the
/// user's terminal.
#[derive(Debug, Clone)]
pub struct ScriptPlugin {
    task_type: &'static str,
    file_name: &'static str,
    program: &'static str,
    /// Interpreter flags placed before the script's path.
    flags: &'static [&'static str],
}

impl ScriptPlugin {
    /// `shell`: `bash <workdir>/script.sh`.
    pub fn shell() -> Self {
        ScriptPlugin {
            task_type: "shell",
            file_name: "script.sh",
            program: "bash",
            flags: &[],
        }
    }

    /// `python`: `python3 -u <workdir>/script.py`. Unbuffered (`-u`) because
    /// stdout goes to a file, where Python would otherwise hold prints back
    /// until exit and show them after the traceback they led to.
    pub fn python() -> Self {
        ScriptPlugin {
            task_type: "python",
            file_name: "script.py",
            program: "python3",
            flags: &["-u"],
        }
    }

    fn script<'a>(&self, body: &'a Map<String, Value>) -> Result<&'a str, String> {
        let t = self.task_type;
        match body.get("script") {
            None | Some(Value::Null) => Err(format!("`script` is required for type {t}")),
            Some(Value::String(script)) if script.trim().is_empty() => {
                Err(format!("`script` must not be empty for type {t}"))
            }
            Some(Value::String(script)) => Ok(script),
            Some(other) => Err(format!(
                "`script` must be text for type {t}, got {}",
                kind(other)
            )),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl TaskPlugin for ScriptPlugin {
    fn task_type(&self) -> &'static str {
        self.task_type
    }

    fn body_fields(&self) -> &'static [&'static str] {
        &["script"]
    }

    fn validate(&self, spec: &TaskSpec) -> Result<(), String> {
        if let Some(unknown) = spec.body.keys().find(|key| key.as_str() != "script") {
            return Err(format!(
                "unknown field `{unknown}` for type {}, expected: script",
                self.task_type
            ));
        }
        self.script(&spec.body).map(drop)
    }

    /// Unknown body fields are ignored here: the definition was validated
    /// when saved, and refusing to run a stored version that an older
    /// release accepted would help nobody.
    fn prepare(&self, dispatch: &TaskDispatch, workdir: &Path) -> Result<ProcessSpec, String> {
        let script = self.script(&dispatch.body)?;
        let path = workdir.join(self.file_name);
        let mut args: Vec<String> = self.flags.iter().map(|f| (*f).to_owned()).collect();
        args.push(path.to_string_lossy().into_owned());
        Ok(ProcessSpec {
            files: vec![(self.file_name.to_owned(), script.to_owned())],
            program: self.program.to_owned(),
            args,
            env: Vec::new(),
        })
    }
}
