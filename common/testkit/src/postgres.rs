//! Throw-away databases on the real PostgreSQL server.
//!
//! The server comes from `SLUICE_TEST_PG` (set by `scripts/test.sh`), or the
//! machine's default `postgres://postgres@127.0.0.1:5432/postgres`. Each
//! [`TempDatabase`] is a fresh database, dropped when the value is dropped,
//! so tests running in parallel never see each other's rows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// The URL of a database on the test server that we may connect to for
/// administration (creating and dropping databases).
pub fn server_url() -> String {
    std::env::var("SLUICE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

fn admin_connection() -> PgConnection {
    let url = server_url();
    PgConnection::establish(&url).unwrap_or_else(|e| {
        panic!(
            "cannot reach the test PostgreSQL at {url}: {e}\n\
             run scripts/test.sh (it starts PostgreSQL), or set SLUICE_TEST_PG"
        )
    })
}

/// A fresh, empty database; dropped (forcibly) on drop.
pub struct TempDatabase {
    name: String,
    url: String,
}

impl TempDatabase {
    pub fn create() -> TempDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!(
            "sluice_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        admin_connection()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        let url = with_database(&server_url(), &name);
        TempDatabase { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        // FORCE (PostgreSQL 13+) closes connections a pool may still hold.
        if let Ok(mut conn) = PgConnection::establish(&server_url()) {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// Stops, starts or restarts (`action`) the test PostgreSQL server, for
/// outage tests; after a start or restart, waits (30 s at most) until it
/// takes connections again.
///
/// `SLUICE_TEST_PG_CTL`, when set, is the shell command that does it, with
/// the action appended as its last argument (a private server, on a machine
/// whose PostgreSQL others use); otherwise the machine's Debian cluster, by
/// `pg_ctlcluster --skip-systemctl-redirect <version> main <action>`.
pub fn control(action: &str) -> Result<(), String> {
    let status = match std::env::var("SLUICE_TEST_PG_CTL") {
        Ok(command) if !command.trim().is_empty() => {
            std::process::Command::new("sh").arg("-c").arg(format!("{command} \"$1\"")).arg("sh").arg(action).status()
        }
        _ => {
            let version = std::fs::read_dir("/etc/postgresql")
                .map_err(|e| format!("no Debian PostgreSQL cluster (/etc/postgresql: {e}); set SLUICE_TEST_PG_CTL"))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .max()
                .ok_or("no PostgreSQL version under /etc/postgresql")?;
            std::process::Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &version, "main", action]).status()
        }
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("postgresql {action} failed: {s}")),
        Err(e) => return Err(format!("cannot {action} postgresql: {e}")),
    }
    if action == "stop" {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match PgConnection::establish(&server_url()) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => return Err(format!("postgresql is not back 30 s after {action}: {e}")),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }

    #[test]
    fn temp_databases_are_created_and_dropped() {
        let name;
        {
            let db = TempDatabase::create();
            name = db.name().to_owned();
            let mut conn = PgConnection::establish(db.url()).expect("connect to the temp database");
            conn.batch_execute("CREATE TABLE t (x INT)").unwrap();
        }
        let mut admin = admin_connection();
        let exists: i64 = diesel::RunQueryDsl::get_result(
            diesel::sql_query(format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'")),
            &mut admin,
        )
        .map(|row: CountRow| row.n)
        .unwrap();
        assert_eq!(exists, 0);
    }

    #[derive(diesel::QueryableByName)]
    struct CountRow {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
}
