//! Schedules: Quartz cron (with seconds, `?`, `L`, `W`, `#`, optional year)
//! evaluated in an IANA time zone, and interval schedules; the next fire
//! times and what to fire after downtime.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

const FIELDS: [&str; 7] = ["seconds", "minutes", "hours", "day-of-month", "month", "day-of-week", "year"];

/// A cron expression that is not valid Quartz syntax; `field` names the
/// part at fault when one can be singled out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression `{expression}`: {}{message}", field.map(|f| format!("{f} field: ")).unwrap_or_default())]
pub struct CronError {
    pub expression: String,
    pub field: Option<&'static str>,
    pub message: String,
}

/// A parsed Quartz cron expression.
#[derive(Debug, Clone)]
pub struct Cron {
    expression: String,
    cron: croner::Cron,
}

fn quartz() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Optional)
        .alternative_weekdays(true)
        .dom_and_dow(false)
        .build()
}

impl Cron {
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let fail = |field, message: String| CronError { expression: expression.to_owned(), field, message };
        let parts: Vec<&str> = expression.split_whitespace().collect();
        if !(6..=7).contains(&parts.len()) {
            return Err(fail(
                None,
                format!("expected 6 or 7 fields (seconds minutes hours day-of-month month day-of-week [year]), got {}", parts.len()),
            ));
        }
        if parts[3] == "?" && parts[5] == "?" {
            return Err(fail(Some("day-of-month"), "`?` may be used in day-of-month or day-of-week, not both".into()));
        }
        let parser = quartz();
        match parser.parse(&parts.join(" ")) {
            Ok(cron) => Ok(Cron { expression: expression.to_owned(), cron }),
            Err(whole) => {
                // Find the field at fault: each field alone in an otherwise
                // neutral expression.
                for (i, part) in parts.iter().enumerate() {
                    let mut probe = ["0", "0", "0", "*", "*", "?", "*"];
                    probe[i] = part;
                    if i == 5 {
                        probe[3] = "?";
                    }
                    if i == 3 && *part == "?" {
                        probe[5] = "*";
                    }
                    if parser.parse(&probe.join(" ")).is_err() {
                        return Err(fail(Some(FIELDS[i]), format!("`{part}` is not valid here")));
                    }
                }
                Err(fail(None, whole.to_string()))
            }
        }
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first fire time strictly after `after`, in zone `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }
}

/// When a schedule fires: cron in a time zone, or every `every` from `start`.
// One per schedule, built once: not worth a box for the cron variant's size.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Timing {
    Cron { cron: Cron, tz: Tz },
    Every { every: Duration, times: Option<u32>, start: DateTime<Utc> },
}

impl Timing {
    /// The first fire time strictly after `after` and not after `end`.
    pub fn next_after(&self, after: DateTime<Utc>, end: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let next = match self {
            Timing::Cron { cron, tz } => cron.next_after(after, *tz)?,
            Timing::Every { every, times, start } => {
                if every.num_milliseconds() <= 0 {
                    return None;
                }
                let k = if after < *start {
                    0
                } else {
                    (after - *start).num_milliseconds() / every.num_milliseconds() + 1
                };
                if times.is_some_and(|t| k >= t as i64) {
                    return None;
                }
                *start + *every * k as i32
            }
        };
        match end {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// The next `count` fire times after `after`.
    pub fn preview(&self, after: DateTime<Utc>, end: Option<DateTime<Utc>>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut t = after;
        while out.len() < count {
            match self.next_after(t, end) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

/// The schedule time of a backfill run for each calendar date: the first
/// time the schedule fires on that date (in its zone), or midnight of the
/// date in `tz` when the schedule does not fire that day (or there is none).
pub fn backfill_times(dates: &[chrono::NaiveDate], timing: Option<&Timing>, tz: Tz) -> Vec<DateTime<Utc>> {
    use chrono::TimeZone;
    dates
        .iter()
        .map(|date| {
            let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
            let start = tz
                .from_local_datetime(&midnight)
                .earliest()
                .unwrap_or_else(|| tz.from_utc_datetime(&midnight))
                .with_timezone(&Utc);
            let fire = timing
                .and_then(|t| t.next_after(start - Duration::milliseconds(1), None))
                .filter(|f| f.with_timezone(&tz).date_naive() == *date);
            fire.unwrap_or(start)
        })
        .collect()
}

/// What to do about fire times missed while no master fired the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfire {
    /// One run, for the latest missed time.
    RunOnce,
    /// Every missed time, oldest first.
    RunAll,
    Skip,
}

/// The fire times due at `now` for a schedule last fired at `last` (or never:
/// then it is considered from `now`, firing nothing missed), with at most
/// `limit` returned under `RunAll`.
pub fn due(timing: &Timing, last: Option<DateTime<Utc>>, now: DateTime<Utc>, end: Option<DateTime<Utc>>, misfire: Misfire, limit: usize) -> Vec<DateTime<Utc>> {
    let Some(last) = last else {
        return Vec::new();
    };
    let mut missed = Vec::new();
    let mut t = last;
    while let Some(next) = timing.next_after(t, end) {
        if next > now {
            break;
        }
        missed.push(next);
        t = next;
        if misfire != Misfire::RunAll && missed.len() > 1 {
            missed.remove(0); // only the latest matters
        }
        if missed.len() >= limit {
            break;
        }
    }
    match misfire {
        Misfire::RunAll => missed,
        Misfire::RunOnce => missed.pop().into_iter().collect(),
        Misfire::Skip => {
            // The one that is due right now (not a missed one) still fires.
            missed.into_iter().filter(|t| now - *t < Duration::seconds(1)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn local(tz: Tz, t: DateTime<Utc>) -> String {
        t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string()
    }

    #[test]
    fn quartz_syntax_is_understood() {
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let daily = Timing::Cron { cron: Cron::parse("0 30 2 * * ?").unwrap(), tz: shanghai };
        let got: Vec<String> = daily.preview(utc(2026, 1, 1, 0, 0, 0), None, 2).into_iter().map(|t| local(shanghai, t)).collect();
        assert_eq!(got, ["2026-01-02 02:30:00 CST", "2026-01-03 02:30:00 CST"]);

        let utc_tz: Tz = "UTC".parse().unwrap();
        let cases = [
            ("0 0 12 L * ?", utc(2024, 2, 1, 0, 0, 0), "2024-02-29 12:00:00 UTC"),     // last day of month, leap year
            ("0 0 9 15W * ?", utc(2024, 6, 1, 0, 0, 0), "2024-06-14 09:00:00 UTC"),    // 15th is a Saturday: nearest weekday Friday
            ("0 0 10 ? * 6#3", utc(2024, 1, 1, 0, 0, 0), "2024-01-19 10:00:00 UTC"),   // third Friday (Quartz: 6 = FRI)
            ("0 0 10 ? * MON-FRI", utc(2024, 1, 6, 0, 0, 0), "2024-01-08 10:00:00 UTC"), // Saturday -> Monday
            ("*/2 * * * * ?", utc(2024, 1, 1, 0, 0, 1), "2024-01-01 00:00:02 UTC"),
            ("0 0 0 1 1 ? 2030", utc(2024, 1, 1, 0, 0, 0), "2030-01-01 00:00:00 UTC"),  // optional year
        ];
        for (expr, after, want) in cases {
            let timing = Timing::Cron { cron: Cron::parse(expr).unwrap(), tz: utc_tz };
            assert_eq!(local(utc_tz, timing.next_after(after, None).unwrap()), want, "{expr}");
        }
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        for (expr, field) in [
            ("0 61 2 * * ?", Some("minutes")),
            ("0 0 25 * * ?", Some("hours")),
            ("0 0 2 32 * ?", Some("day-of-month")),
            ("0 0 2 * 13 ?", Some("month")),
            ("0 0 2 ? * 9", Some("day-of-week")),
            ("70 0 2 * * ?", Some("seconds")),
            ("0 0 2 ? * ?", Some("day-of-month")),
            ("0 0 2 * *", None),
        ] {
            let err = Cron::parse(expr).unwrap_err();
            assert_eq!(err.field, field, "{expr}: {err}");
            assert!(err.to_string().starts_with(&format!("invalid cron expression `{expr}`")), "{err}");
        }
    }

    #[test]
    fn dst_is_handled_in_the_schedule_zone() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 02:30 does not exist on 2026-03-08: that day's run comes right after the gap.
        let t = Timing::Cron { cron: Cron::parse("0 30 2 * * ?").unwrap(), tz: ny };
        let got: Vec<String> = t.preview(utc(2026, 3, 7, 12, 0, 0), None, 3).into_iter().map(|t| local(ny, t)).collect();
        assert_eq!(got, ["2026-03-08 03:00:00 EDT", "2026-03-09 02:30:00 EDT", "2026-03-10 02:30:00 EDT"]);
        // 01:30 happens twice on 2026-11-01: a fixed-time job runs once.
        let t = Timing::Cron { cron: Cron::parse("0 30 1 * * ?").unwrap(), tz: ny };
        let got: Vec<String> = t.preview(utc(2026, 10, 31, 12, 0, 0), None, 2).into_iter().map(|t| local(ny, t)).collect();
        assert_eq!(got, ["2026-11-01 01:30:00 EDT", "2026-11-02 01:30:00 EST"]);
    }

    #[test]
    fn intervals_count_from_their_start_and_stop_after_times() {
        let start = utc(2026, 1, 1, 0, 0, 0);
        let t = Timing::Every { every: Duration::minutes(5), times: Some(3), start };
        assert_eq!(t.preview(start - Duration::seconds(1), None, 10), [start, start + Duration::minutes(5), start + Duration::minutes(10)]);
        assert_eq!(t.next_after(start + Duration::minutes(7), None), Some(start + Duration::minutes(10)));
        assert_eq!(t.next_after(start + Duration::minutes(10), None), None);
        let end = start + Duration::minutes(6);
        assert_eq!(t.preview(start - Duration::seconds(1), Some(end), 10).len(), 2);
    }

    #[test]
    fn backfill_dates_take_the_days_fire_time() {
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let daily = Timing::Cron { cron: Cron::parse("0 30 2 * * ?").unwrap(), tz: shanghai };
        let dates = [chrono::NaiveDate::from_ymd_opt(2024, 2, 28).unwrap(), chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()];
        let got: Vec<String> = backfill_times(&dates, Some(&daily), shanghai).into_iter().map(|t| local(shanghai, t)).collect();
        assert_eq!(got, ["2024-02-28 02:30:00 CST", "2024-02-29 02:30:00 CST"]);
        // No schedule: midnight in the zone.
        let got: Vec<String> = backfill_times(&dates[..1], None, shanghai).into_iter().map(|t| local(shanghai, t)).collect();
        assert_eq!(got, ["2024-02-28 00:00:00 CST"]);
        // A weekly schedule that does not fire that day: midnight too.
        let mondays = Timing::Cron { cron: Cron::parse("0 0 9 ? * MON").unwrap(), tz: shanghai };
        let wednesday = [chrono::NaiveDate::from_ymd_opt(2024, 2, 28).unwrap()];
        assert_eq!(local(shanghai, backfill_times(&wednesday, Some(&mondays), shanghai)[0]), "2024-02-28 00:00:00 CST");
    }

    #[test]
    fn misfire_policies() {
        let tz: Tz = "UTC".parse().unwrap();
        let t = Timing::Cron { cron: Cron::parse("0 0 * * * ?").unwrap(), tz };
        let last = utc(2026, 1, 1, 0, 0, 0);
        let now = utc(2026, 1, 1, 3, 30, 0);
        assert_eq!(due(&t, Some(last), now, None, Misfire::RunAll, 100), [utc(2026, 1, 1, 1, 0, 0), utc(2026, 1, 1, 2, 0, 0), utc(2026, 1, 1, 3, 0, 0)]);
        assert_eq!(due(&t, Some(last), now, None, Misfire::RunOnce, 100), [utc(2026, 1, 1, 3, 0, 0)]);
        assert!(due(&t, Some(last), now, None, Misfire::Skip, 100).is_empty());
        // On time (not missed): every policy fires it.
        let on_time = utc(2026, 1, 1, 1, 0, 0);
        for policy in [Misfire::RunAll, Misfire::RunOnce, Misfire::Skip] {
            assert_eq!(due(&t, Some(last), on_time, None, policy, 100), [on_time], "{policy:?}");
        }
        assert!(due(&t, None, now, None, Misfire::RunAll, 100).is_empty(), "a schedule never fired has missed nothing");
        assert_eq!(due(&t, Some(last), now, None, Misfire::RunAll, 2).len(), 2, "bounded");
    }
}
