//! The example workflow `sluice standalone` starts with, so that a newcomer
//! has something to run before writing a workflow of their own. It is the
//! file `examples/daily_etl.yaml`, built into the binary.

use anyhow::Context;
use sluice_domain::Params;
use sluice_storage::{Store, StoreError};
use sluice_tasks::TaskPlugins;

pub const DAILY_ETL: &str = include_str!("../../examples/daily_etl.yaml");

/// Stores the example in its project (creating the project) unless a
/// workflow of that name is already there: a user's edited copy is never
/// overwritten, and restarts store no new versions.
pub async fn install(store: &dyn Store) -> anyhow::Result<()> {
    let doc = sluice_spec::parse_yaml(DAILY_ETL).context("the bundled example does not parse")?;
    doc.validate(&TaskPlugins::builtin()).context("the bundled example is invalid")?;
    let project_name = doc.require_project()?;
    let project = match store.project(project_name).await? {
        Some(project) => project,
        None => match store.create_project(project_name, "examples", &Params::new()).await {
            Ok(project) => project,
            // Another process created it in between: use theirs.
            Err(StoreError::Conflict(_)) => store.project(project_name).await?.context("project vanished")?,
            Err(e) => return Err(e.into()),
        },
    };
    if store.workflow(project.id, &doc.spec.name, None).await?.is_some() {
        return Ok(());
    }
    let saved = store.save_workflow(project.id, &doc.spec).await?;
    tracing::info!(project = project_name, workflow = %doc.spec.name, version = saved.version, "example workflow added");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::{PoolOptions, SqliteStore};

    #[tokio::test]
    async fn the_example_is_added_once_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db").to_str().unwrap(), PoolOptions::sized(1)).await.unwrap();
        install(&store).await.unwrap();
        let project = store.project("demo").await.unwrap().expect("project demo");
        let stored = store.workflow(project.id, "daily_etl", None).await.unwrap().expect("workflow daily_etl");
        assert_eq!(stored.version, 1);
        assert!(stored.tasks.len() >= 3, "a few tasks: {}", stored.tasks.len());

        // A user's edited version stays as it is across restarts.
        let mut edited = sluice_spec::parse_yaml(DAILY_ETL).unwrap().spec;
        edited.description = "mine now".into();
        assert_eq!(store.save_workflow(project.id, &edited).await.unwrap().version, 2);
        install(&store).await.unwrap();
        let latest = store.workflow(project.id, "daily_etl", None).await.unwrap().unwrap();
        assert_eq!((latest.version, latest.description.as_str()), (2, "mine now"));
    }
}
