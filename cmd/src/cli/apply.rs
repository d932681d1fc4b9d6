//! `sluice apply` and `sluice validate`: workflow files checked locally
//! (the same checks the server makes), then stored through the API.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sluice_api::types::ScheduleBody;
use sluice_spec::WorkflowDocument;
use sluice_tasks::TaskPlugins;

use super::client::{Client, ClientError};
use super::{output, ERROR};

const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// A workflow file, read and checked.
struct Checked {
    text: String,
    json: bool,
    doc: WorkflowDocument,
    project: String,
    tasks: usize,
}

/// The files `paths` stand for: a file as given, a directory as its
/// workflow files (by extension), sorted, not recursing.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut found = Vec::new();
        for entry in entries {
            let file = entry.map_err(|e| format!("{}: {e}", path.display()))?.path();
            let workflow_file = file.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e));
            if workflow_file && file.is_file() {
                found.push(file);
            }
        }
        if found.is_empty() {
            return Err(format!("{}: no *.yaml, *.yml or *.json file in this directory", path.display()));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Reads and checks one file; the error names the file and the place in it.
fn check(file: &Path, plugins: &TaskPlugins) -> Result<Checked, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| at(&e))?;
    let json = file.extension().is_some_and(|e| e == "json");
    let doc = if json { sluice_spec::parse_json(&text) } else { sluice_spec::parse_yaml(&text) }.map_err(|e| at(&e))?;
    let dag = doc.validate(plugins).map_err(|e| at(&e))?;
    let project = doc.require_project().map_err(|e| at(&e))?.to_owned();
    let tasks = dag.len();
    Ok(Checked { text, json, doc, project, tasks })
}

/// `sluice validate`: 0 when every file is a valid workflow, 2 otherwise.
pub fn validate(paths: &[PathBuf]) -> ExitCode {
    let files = match expand(paths) {
        Ok(files) => files,
        Err(error) => {
            eprintln!("sluice: {error}");
            return ExitCode::from(ERROR);
        }
    };
    let plugins = TaskPlugins::builtin();
    let mut failed = false;
    for file in files {
        match check(&file, &plugins) {
            Ok(checked) => match &checked.doc.schedule {
                None => println!("ok: {}/{} ({} tasks)", checked.project, checked.doc.spec.name, checked.tasks),
                Some(schedule) => {
                    let body: ScheduleBody =
                        serde_json::from_value(sluice_spec::schedule_to_value(schedule)).expect("a schedule's document form");
                    println!("ok: {}/{} ({} tasks; schedule: {})", checked.project, checked.doc.spec.name, checked.tasks, output::trigger(&body));
                }
            },
            Err(error) => {
                eprintln!("{error}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::from(ERROR) } else { ExitCode::SUCCESS }
}

/// `sluice apply`: each file is checked, then stored; a file that fails
/// does not undo or stop the others, but makes the exit code 2.
pub async fn apply(paths: &[PathBuf], client: &Client) -> anyhow::Result<ExitCode> {
    let files = expand(paths).map_err(anyhow::Error::msg)?;
    let plugins = TaskPlugins::builtin();
    let mut projects = BTreeSet::new();
    let mut failed = false;
    for file in files {
        let checked = match check(&file, &plugins) {
            Ok(checked) => checked,
            Err(error) => {
                eprintln!("{error}");
                failed = true;
                continue;
            }
        };
        match store(client, &checked, &mut projects).await {
            Ok(line) => println!("{line}"),
            // No other file can get through either: stop here.
            Err(error @ ClientError::Unreachable { .. }) => return Err(error.into()),
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(ERROR) } else { ExitCode::SUCCESS })
}

/// Creates the project the first time this run meets it (an existing one
/// is fine), then stores the document as written.
async fn store(client: &Client, checked: &Checked, projects: &mut BTreeSet<String>) -> Result<String, ClientError> {
    if !projects.contains(&checked.project) {
        match client.create_project(&checked.project).await {
            Ok(_) => println!("project {} created", checked.project),
            Err(e) if e.code() == Some("conflict") => {}
            Err(e) => return Err(e),
        }
        projects.insert(checked.project.clone());
    }
    let content_type = if checked.json { "application/json" } else { "application/yaml" };
    let name = &checked.doc.spec.name;
    let saved = client.put_workflow(&checked.project, name, checked.text.clone(), content_type).await?.value;
    let what = if saved.created { "created" } else { "unchanged" };
    let mut line = format!("{}/{} version {} ({what})", checked.project, saved.name, saved.version);
    if let Some(schedule) = &saved.schedule {
        let state = if schedule.online { "online" } else { "offline" };
        line.push_str(&format!(", schedule {} ({state})", schedule.change));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_stands_for_its_workflow_files_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.yml", "a.yaml", "c.json", "notes.txt", "README.md"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let single = dir.path().join("z.yaml");
        let files = expand(&[single.clone(), dir.path().to_owned()]).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["z.yaml", "a.yaml", "b.yml", "c.json"]);

        let empty = tempfile::tempdir().unwrap();
        assert!(expand(&[empty.path().to_owned()]).unwrap_err().contains("no *.yaml"));
    }

    #[test]
    fn mistakes_name_the_file_and_the_path_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etl.yaml");
        std::fs::write(
            &file,
            "project: p\nname: w\ntasks:\n  - {name: a, type: shell, script: x}\n  - {name: b, type: shell, script: x, retires: 2}\n",
        )
        .unwrap();
        let error = check(&file, &TaskPlugins::builtin()).err().unwrap();
        assert!(error.starts_with(&format!("{}: tasks[1].retires: unknown field", file.display())), "{error}");

        std::fs::write(&file, "name: w\ntasks:\n  - {name: a, type: shell, script: x}\n").unwrap();
        let error = check(&file, &TaskPlugins::builtin()).err().unwrap();
        assert_eq!(error, format!("{}: project: required", file.display()));

        let json = dir.path().join("w.json");
        std::fs::write(&json, r#"{"project": "p", "name": "w", "tasks": [{"name": "a", "type": "shell", "script": "x"}]}"#).unwrap();
        let checked = check(&json, &TaskPlugins::builtin()).unwrap();
        assert!(checked.json);
        assert_eq!((checked.project.as_str(), checked.tasks), ("p", 1));
    }

    #[test]
    fn the_scheduled_example_is_valid_and_starts_offline() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hourly_report.yaml");
        let checked = check(&file, &TaskPlugins::builtin()).unwrap();
        assert_eq!((checked.project.as_str(), checked.doc.spec.name.as_str()), ("demo", "hourly_report"));
        assert!(checked.doc.schedule.is_some(), "the example shows a schedule");
    }

    #[test]
    fn the_bundled_example_is_valid() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_etl.yaml");
        let checked = check(&file, &TaskPlugins::builtin()).unwrap();
        assert_eq!((checked.project.as_str(), checked.doc.spec.name.as_str()), ("demo", "daily_etl"));
    }
}
