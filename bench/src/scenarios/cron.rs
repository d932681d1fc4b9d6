//! cron: many schedules firing together (Quartz `*/N * * * * ?`, all on the
//! same second, the way crontabs line up in practice) for a while; fire lag
//! (when a master can first see the command − its schedule time)
//! p50/p99/max, duplicates and misses.
//!
//! The bench watches the `commands` table through a trigger of its own in
//! the throw-away database (a master consumes, deletes, a command moments
//! after it appears, so the table alone would not keep them): a statement
//! trigger records each fire with its transaction id and sends a
//! notification carrying that id. PostgreSQL delivers notifications when
//! the transaction commits, so a listening connection of the bench receives
//! it exactly when the fire becomes visible to masters; the lag is that
//! moment (polled every 0.2 ms) − the fire time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::deploy::{sql_execute, sql_query, Deployment, Kind, Options, PROJECT};
use crate::report::{num, Outcome, Table};
use crate::stats::Spread;

const WATCH: &str = "
CREATE TABLE bench_fires (schedule_id BIGINT NOT NULL, schedule_time BIGINT NOT NULL, tx BIGINT NOT NULL);
CREATE FUNCTION bench_fire() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_fires SELECT schedule_id, schedule_time, txid_current() FROM fired WHERE schedule_id IS NOT NULL;
    IF FOUND THEN
        PERFORM pg_notify('bench_fires', txid_current()::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_fire AFTER INSERT ON commands REFERENCING NEW TABLE AS fired
    FOR EACH STATEMENT EXECUTE FUNCTION bench_fire();
";

#[derive(QueryableByName)]
struct Fire {
    #[diesel(sql_type = BigInt)]
    schedule_id: i64,
    #[diesel(sql_type = BigInt)]
    schedule_time: i64,
    #[diesel(sql_type = BigInt)]
    tx: i64,
}

/// Records when each transaction's notification arrives (ms since the
/// epoch, by transaction id), until dropped.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<HashMap<i64, f64>>>>,
}

impl Listener {
    fn start(url: &str) -> anyhow::Result<Listener> {
        let mut conn = PgConnection::establish(url)?;
        diesel::sql_query("LISTEN bench_fires").execute(&mut conn)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = HashMap::new();
            while !stopping.load(Ordering::Relaxed) {
                for notification in conn.notifications_iter() {
                    let at = Utc::now().timestamp_micros() as f64 / 1000.0;
                    let tx: i64 = notification?.payload.parse().context("notification payload")?;
                    seen.entry(tx).or_insert(at);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(seen)
        });
        Ok(Listener { stop, thread: Some(thread) })
    }

    fn finish(mut self) -> anyhow::Result<HashMap<i64, f64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().map_err(|_| anyhow::anyhow!("listener panicked"))?
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CronFigures {
    pub schedules: usize,
    pub every_s: u32,
    pub window_s: u32,
    pub expected_fires: usize,
    pub fires: usize,
    pub lag_ms: Spread,
    pub duplicate_fires: usize,
    pub duplicate_instances: usize,
    pub misses: usize,
}

/// Fire times of a `*/every` schedule in `[from, from + window)`, given
/// `from` is on such a boundary: `window / every`.
pub fn expected_fires(schedules: usize, every_s: u32, window_s: u32) -> usize {
    schedules * (window_s / every_s) as usize
}

pub async fn run(schedules: usize, every_s: u32, window_s: u32) -> anyhow::Result<Outcome> {
    let deployment = Deployment::start(Kind::Cluster, Options::default()).await?;
    let result = measure(&deployment, schedules, every_s, window_s).await;
    tokio::task::spawn_blocking(move || deployment.stop()).await?;
    let f = result?;
    let mut table = Table::new(
        format!("cron: {} schedules firing every {} s for {} s (cluster, 1 master)", f.schedules, f.every_s, f.window_s),
        &["fires", "expected", "lag p50 ms", "lag p99 ms", "lag max ms", "duplicates", "misses"],
    );
    table.row(vec![
        f.fires.to_string(),
        f.expected_fires.to_string(),
        num(f.lag_ms.p50, 1),
        num(f.lag_ms.p99, 1),
        num(f.lag_ms.max, 1),
        (f.duplicate_fires + f.duplicate_instances).to_string(),
        f.misses.to_string(),
    ]);
    Ok(Outcome { scenario: "cron", tables: vec![table], json: serde_json::to_value(&f)? })
}

async fn measure(deployment: &Deployment, schedules: usize, every_s: u32, window_s: u32) -> anyhow::Result<CronFigures> {
    let api = &deployment.api;
    let url = deployment.database_url().expect("cluster");
    api.create_project(PROJECT).await?;
    sql_execute(&url, WATCH).await?;
    let listener = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || Listener::start(&url)).await??
    };
    let cron = format!("*/{every_s} * * * * ?");
    futures::stream::iter(0..schedules)
        .map(|i| {
            let document = json!({
                "project": PROJECT, "name": format!("cron{i:05}"),
                "tasks": [{"name": "t", "type": "shell", "script": "true"}],
                "schedule": {"cron": cron},
            });
            async move { api.put_workflow(PROJECT, &document).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    // All online at once, with no fire time missed before now to catch up on.
    let now_ms = Utc::now().timestamp_millis();
    sql_execute(&url, &format!("UPDATE schedules SET online = TRUE, updated_at = {now_ms}")).await?;
    // The leader re-reads schedules every second; start the window on the
    // first fire time after it surely has.
    let every_ms = i64::from(every_s) * 1000;
    let from = (now_ms + 3000).div_euclid(every_ms) * every_ms + every_ms;
    let to = from + i64::from(window_s) * 1000;
    // Wait the window out, then until late fires stop landing (a leader
    // that fell behind fires every time it owes, late): a miss is a fire
    // time that never got its command.
    let wait_ms = |until: i64| Duration::from_millis((until - Utc::now().timestamp_millis()).max(0) as u64);
    tokio::time::sleep(wait_ms(to + every_ms)).await;
    let window = format!("schedule_time >= {from} AND schedule_time < {to}");
    let mut last = usize::MAX;
    let fires = loop {
        let fires = sql_query::<Fire>(&url, &format!("SELECT schedule_id, schedule_time, tx FROM bench_fires WHERE {window}")).await?;
        if fires.len() == last || Utc::now().timestamp_millis() > to + 300_000 {
            break fires;
        }
        last = fires.len();
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let seen = tokio::task::spawn_blocking(move || listener.finish()).await??;
    let unseen = fires.iter().filter(|f| !seen.contains_key(&f.tx)).count();
    anyhow::ensure!(unseen == 0, "{unseen} fires were committed without their notification reaching the bench");
    let lags: Vec<f64> = fires.iter().map(|f| seen[&f.tx] - f.schedule_time as f64).collect();
    let distinct = fires.iter().map(|f| (f.schedule_id, f.schedule_time)).collect::<std::collections::HashSet<_>>().len();
    let duplicate_instances = sql_query::<Count>(
        &url,
        &format!("SELECT count(*) AS n FROM (SELECT 1 FROM workflow_instances WHERE {window} GROUP BY workflow_id, schedule_time HAVING count(*) > 1) d"),
    )
    .await?
    .pop()
    .map(|c| c.n as usize)
    .unwrap_or(0);
    let expected = expected_fires(schedules, every_s, window_s);
    Ok(CronFigures {
        schedules,
        every_s,
        window_s,
        expected_fires: expected,
        fires: lags.len(),
        lag_ms: Spread::of(&lags),
        duplicate_fires: lags.len() - distinct,
        duplicate_instances,
        misses: expected.saturating_sub(distinct),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expects_one_fire_per_period_per_schedule() {
        assert_eq!(expected_fires(10_000, 10, 60), 60_000);
        assert_eq!(expected_fires(3, 5, 12), 6);
    }
}
