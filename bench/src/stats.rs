//! The figures every scenario reports, computed the same way for Sluice and
//! for the peer: pure functions over timestamps, tested here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `q` quantile (0..=1) of `values` by nearest rank; `NaN` when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50 / p99 / max of a sample, in its unit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        Spread {
            count: values.len(),
            p50: quantile(values, 0.5),
            p99: quantile(values, 0.99),
            max: values.iter().copied().fold(f64::NAN, f64::max),
        }
    }
}

/// One task's run as the scheduler recorded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskTimes {
    pub name: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A chain run as recorded: when it was submitted, when it reached its
/// final state, and its tasks. The peer script prints this shape too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainRun {
    pub submitted: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub tasks: Vec<TaskTimes>,
}

/// What chain40 reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ChainFigures {
    pub tasks: usize,
    /// Submit to final state.
    pub total_ms: f64,
    /// Sum of the tasks' own run times (start to end).
    pub task_run_ms: f64,
    /// (total − task run time) / tasks.
    pub overhead_per_task_ms: f64,
    /// Gap between a task's end and its successor's start.
    pub gap_p50_ms: f64,
    pub gap_max_ms: f64,
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

impl ChainRun {
    /// The figures of a chain whose tasks run in the order of their names
    /// (`t00`, `t01`, …).
    pub fn figures(&self) -> ChainFigures {
        let mut tasks = self.tasks.clone();
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        let total_ms = ms(self.submitted, self.finished);
        let task_run_ms: f64 = tasks.iter().map(|t| ms(t.start, t.end)).sum();
        let gaps: Vec<f64> = tasks.windows(2).map(|w| ms(w[0].end, w[1].start)).collect();
        let n = tasks.len().max(1) as f64;
        ChainFigures {
            tasks: tasks.len(),
            total_ms,
            task_run_ms,
            overhead_per_task_ms: (total_ms - task_run_ms) / n,
            gap_p50_ms: quantile(&gaps, 0.5),
            gap_max_ms: gaps.iter().copied().fold(f64::NAN, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.count, s.p50, s.max), (3, 2.0, 3.0));
    }

    #[test]
    fn chain_figures_split_overhead_from_run_time() {
        // Three tasks of 10 ms each, 10 ms and 25 ms between them, submitted
        // 20 ms before the first starts and finished 10 ms after the last.
        let run = ChainRun {
            submitted: at(0),
            finished: at(95),
            tasks: vec![
                TaskTimes { name: "t01".into(), start: at(40), end: at(50) },
                TaskTimes { name: "t00".into(), start: at(20), end: at(30) },
                TaskTimes { name: "t02".into(), start: at(75), end: at(85) },
            ],
        };
        let f = run.figures();
        assert_eq!(f.tasks, 3);
        assert_eq!(f.total_ms, 95.0);
        assert_eq!(f.task_run_ms, 30.0);
        assert!((f.overhead_per_task_ms - 65.0 / 3.0).abs() < 1e-9);
        assert_eq!(f.gap_p50_ms, 10.0);
        assert_eq!(f.gap_max_ms, 25.0);
    }
}
