//! The `schedule:` of a workflow document, also the body of the API's
//! `PUT …/workflows/{name}/schedule`:
//!
//! ```yaml
//! schedule: {cron: "0 30 2 * * ?", timezone: Asia/Shanghai, start: 2026-01-01, end: 2027-01-01, misfire: run_once}
//! schedule: {every: 5m, times: 10}
//! ```
//!
//! `cron` is Quartz syntax evaluated in `timezone` (an IANA name, default
//! UTC); `every` is a duration counted from `start` (or from when the
//! schedule was stored), at most `times` times. `start` and `end` are a date
//! (`2026-01-01`: midnight in the schedule's zone, UTC for `every`) or an
//! RFC 3339 time; `misfire` (`run_once` | `run_all` | `skip`, default
//! `run_once`) says what happens to fire times missed while no master ran.

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveTime, Offset, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value};
use sluice_domain::{MisfirePolicy, ScheduleSpec, Trigger};
use sluice_params::cron::Cron;
use sluice_params::Tz;

use crate::{err, kind, opt_text, DocumentError};

pub(crate) const SCHEDULE_KEYS: &[&str] = &["cron", "timezone", "every", "times", "start", "end", "misfire"];

/// The shortest interval an `every` schedule may have: the cron leader
/// fires at the granularity of seconds, as Quartz cron does.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// Reads a schedule from `value`; mistakes are reported at `at.<key>`
/// (`schedule.cron` in a workflow document; with `at` empty, at `cron`).
pub fn schedule_from_value(value: Value, at: &str) -> Result<ScheduleSpec, DocumentError> {
    let path = |key: &str| if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") };
    let whole = if at.is_empty() { None } else { Some(at.to_owned()) };
    let whole_err = |message: String| DocumentError { field: whole.clone(), message };
    let Value::Object(mut map) = value else {
        return Err(whole_err(format!(
            "a schedule is a mapping such as {{cron: \"0 30 2 * * ?\", timezone: Asia/Shanghai}} or {{every: 5m}}, got {}",
            kind(&value)
        )));
    };
    if let Some(unknown) = map.keys().find(|k| !SCHEDULE_KEYS.contains(&k.as_str())) {
        return Err(err(path(unknown), format!("unknown field, expected one of: {}", SCHEDULE_KEYS.join(", "))));
    }
    let cron = opt_text(&mut map, "cron", &path("cron"))?;
    let every = match map.remove("every") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(every(&text).map_err(|message| err(path("every"), message))?),
        Some(other) => return Err(err(path("every"), format!("expected a duration such as 30s, 5m, 1h, got {}", kind(&other)))),
    };
    let timezone = opt_text(&mut map, "timezone", &path("timezone"))?;
    let times = match map.remove("times") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| err(path("times"), format!("expected a count (1 or more), got {n}")))?,
        ),
        Some(other) => return Err(err(path("times"), format!("expected a count, got {}", kind(&other)))),
    };
    let (trigger, tz) = match (cron, every) {
        (Some(_), Some(_)) => return Err(whole_err("either `cron` or `every`, not both".into())),
        (None, None) => return Err(whole_err("needs `cron` (a Quartz expression) or `every` (a duration)".into())),
        (Some(expression), None) => {
            if times.is_some() {
                return Err(err(path("times"), "only for `every` schedules; a cron schedule runs until its `end`"));
            }
            Cron::parse(&expression).map_err(|e| err(path("cron"), e.to_string()))?;
            let timezone = timezone.unwrap_or_else(|| "UTC".to_owned());
            let tz = sluice_params::timezone(&timezone)
                .map_err(|e| err(path("timezone"), format!("`{timezone}`: {}", e.message)))?;
            (Trigger::Cron { expression, timezone }, tz)
        }
        (None, Some(every)) => {
            if timezone.is_some() {
                return Err(err(
                    path("timezone"),
                    "only for `cron` schedules; an `every` schedule counts from `start`, which may be an RFC 3339 time with its offset",
                ));
            }
            (Trigger::Interval { every, times }, Tz::UTC)
        }
    };
    let start = instant(&mut map, "start", &path("start"), tz)?;
    let end = instant(&mut map, "end", &path("end"), tz)?;
    if let (Some(start), Some(end)) = (start, end) {
        if end <= start {
            return Err(err(path("end"), "must be after `start`"));
        }
    }
    let misfire = opt_text(&mut map, "misfire", &path("misfire"))?
        .map(|raw| raw.parse::<MisfirePolicy>().map_err(|e| err(path("misfire"), e.to_string())))
        .transpose()?
        .unwrap_or_default();
    Ok(ScheduleSpec { trigger, start, end, misfire })
}

fn every(text: &str) -> Result<Duration, String> {
    let d = sluice_domain::duration_text::parse(text)?;
    // Stored to the millisecond.
    let d = Duration::from_millis(d.as_millis() as u64);
    if d < MIN_EVERY {
        return Err(format!("`{text}` is too short: an interval is at least 1s"));
    }
    Ok(d)
}

/// A date (midnight in `tz`) or an RFC 3339 time, kept to the millisecond
/// as the store keeps it.
fn instant(map: &mut Map<String, Value>, key: &str, path: &str, tz: Tz) -> Result<Option<DateTime<Utc>>, DocumentError> {
    let Some(text) = opt_text(map, key, path)? else { return Ok(None) };
    let text = text.trim();
    let at = if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        midnight(date, tz)
    } else if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        t.with_timezone(&Utc)
    } else {
        return Err(err(path, format!("expected a date (2026-01-01) or an RFC 3339 time (2026-01-01T02:30:00+08:00), got `{text}`")));
    };
    Ok(Some(DateTime::from_timestamp_millis(at.timestamp_millis()).expect("in range")))
}

/// The first instant of `date` in `tz`: midnight, or the end of the gap
/// when the zone skips midnight that day (America/Santiago in September).
fn midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let local = date.and_time(NaiveTime::MIN);
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc),
        LocalResult::None => {
            // Midnight read with the offset in force before the gap lands
            // on the first instant after it.
            let before = tz.offset_from_utc_datetime(&(local - chrono::Duration::days(1))).fix();
            before.from_local_datetime(&local).single().expect("fixed offsets have no gaps").with_timezone(&Utc)
        }
    }
}

/// The zone a schedule's times are shown in: its own for cron, UTC for
/// `every`. `None` when the stored zone is not (or no longer) known.
pub fn schedule_zone(trigger: &Trigger) -> Option<Tz> {
    match trigger {
        Trigger::Cron { timezone, .. } => sluice_params::timezone(timezone).ok(),
        Trigger::Interval { .. } => Some(Tz::UTC),
    }
}

/// An instant as RFC 3339 in `tz` with its offset, to the second
/// (`2026-03-08T03:00:00-04:00`), or to the millisecond if it has any.
pub fn zoned_text(at: DateTime<Utc>, tz: Tz) -> String {
    let format = if at.timestamp_subsec_millis() == 0 { SecondsFormat::Secs } else { SecondsFormat::Millis };
    at.with_timezone(&tz).to_rfc3339_opts(format, false)
}

/// `start`/`end` as the document writes them: a date when the instant is
/// the first of that day in the zone, an RFC 3339 time otherwise.
fn instant_text(at: DateTime<Utc>, tz: Tz) -> String {
    let date = at.with_timezone(&tz).date_naive();
    if midnight(date, tz) == at {
        date.format("%Y-%m-%d").to_string()
    } else {
        zoned_text(at, tz)
    }
}

/// The document form of a schedule (what [`schedule_from_value`] reads).
pub fn schedule_to_value(spec: &ScheduleSpec) -> Value {
    let mut map = Map::new();
    match &spec.trigger {
        Trigger::Cron { expression, timezone } => {
            map.insert("cron".into(), expression.clone().into());
            map.insert("timezone".into(), timezone.clone().into());
        }
        Trigger::Interval { every, times } => {
            map.insert("every".into(), humantime::format_duration(*every).to_string().into());
            if let Some(times) = times {
                map.insert("times".into(), (*times).into());
            }
        }
    }
    let tz = schedule_zone(&spec.trigger).unwrap_or(Tz::UTC);
    if let Some(start) = spec.start {
        map.insert("start".into(), instant_text(start, tz).into());
    }
    if let Some(end) = spec.end {
        map.insert("end".into(), instant_text(end, tz).into());
    }
    map.insert("misfire".into(), spec.misfire.as_str().into());
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn read(value: Value) -> Result<ScheduleSpec, DocumentError> {
        schedule_from_value(value, "schedule")
    }

    #[test]
    fn the_issue_examples_read_into_schedule_specs() {
        let cron = read(json!({"cron": "0 30 2 * * ?", "timezone": "Asia/Shanghai", "start": "2026-01-01", "end": "2027-01-01", "misfire": "run_once"})).unwrap();
        assert_eq!(cron.trigger, Trigger::Cron { expression: "0 30 2 * * ?".into(), timezone: "Asia/Shanghai".into() });
        assert_eq!(cron.start, Some(utc("2025-12-31T16:00:00Z")), "midnight in Shanghai");
        assert_eq!(cron.end, Some(utc("2026-12-31T16:00:00Z")));
        assert_eq!(cron.misfire, MisfirePolicy::RunOnce);

        let every = read(json!({"every": "5m", "times": 10})).unwrap();
        assert_eq!(every.trigger, Trigger::Interval { every: Duration::from_secs(300), times: Some(10) });
        assert_eq!((every.start, every.end, every.misfire), (None, None, MisfirePolicy::RunOnce));

        let defaults = read(json!({"cron": "0 0 * * * ?", "start": "2026-03-08T03:00:00.5-04:00", "misfire": "skip"})).unwrap();
        assert_eq!(defaults.trigger, Trigger::Cron { expression: "0 0 * * * ?".into(), timezone: "UTC".into() });
        assert_eq!(defaults.start, Some(utc("2026-03-08T07:00:00.500Z")));
        assert_eq!(defaults.misfire, MisfirePolicy::Skip);
    }

    #[test]
    fn a_date_is_the_first_instant_of_that_day_in_the_zone() {
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(midnight(NaiveDate::from_ymd_opt(2026, 3, 8).unwrap(), ny), utc("2026-03-08T05:00:00Z"));
        assert_eq!(midnight(NaiveDate::from_ymd_opt(2026, 3, 9).unwrap(), ny), utc("2026-03-09T04:00:00Z"));
        // Santiago skips 00:00-01:00 on 2026-09-06: the day starts at 01:00 -03.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        assert_eq!(midnight(NaiveDate::from_ymd_opt(2026, 9, 6).unwrap(), santiago), utc("2026-09-06T04:00:00Z"));
    }

    #[test]
    fn schedules_round_trip_through_their_document_form() {
        for value in [
            json!({"cron": "0 30 2 * * ?", "timezone": "Asia/Shanghai", "start": "2026-01-01", "end": "2027-01-01", "misfire": "run_once"}),
            json!({"cron": "*/2 * * * * ?", "timezone": "UTC", "start": "2026-01-01T02:30:00+00:00", "misfire": "run_all"}),
            json!({"every": "1h 30m", "times": 3, "start": "2026-01-01", "misfire": "skip"}),
            json!({"every": "5m", "misfire": "run_once"}),
        ] {
            let spec = read(value.clone()).unwrap();
            assert_eq!(schedule_to_value(&spec), value);
            assert_eq!(read(schedule_to_value(&spec)).unwrap(), spec);
        }
        // Times that are not a midnight come back as RFC 3339 in the zone.
        let spec = read(json!({"cron": "0 0 * * * ?", "timezone": "America/New_York", "start": "2026-03-08T07:00:00Z"})).unwrap();
        assert_eq!(schedule_to_value(&spec)["start"], "2026-03-08T03:00:00-04:00");
        assert_eq!(read(schedule_to_value(&spec)).unwrap(), spec);
    }

    #[test]
    fn mistakes_are_named_at_their_path() {
        let cases = [
            (json!({"cron": "0 61 2 * * ?"}), Some("schedule.cron"), "invalid cron expression `0 61 2 * * ?`: minutes field: `61` is not valid here"),
            (json!({"cron": "0 0 2 ? * 9"}), Some("schedule.cron"), "invalid cron expression `0 0 2 ? * 9`: day-of-week field"),
            (json!({"cron": "0 0 2 * *"}), Some("schedule.cron"), "invalid cron expression `0 0 2 * *`: expected 6 or 7 fields"),
            (json!({"cron": "0 0 2 * * ?", "timezone": "Mars/Olympus"}), Some("schedule.timezone"), "`Mars/Olympus`: unknown time zone"),
            (json!({"cron": "0 0 2 * * ?", "cronn": "x"}), Some("schedule.cronn"), "unknown field, expected one of: cron, timezone, every"),
            (json!({"cron": "0 0 2 * * ?", "every": "5m"}), Some("schedule"), "either `cron` or `every`, not both"),
            (json!({"misfire": "skip"}), Some("schedule"), "needs `cron`"),
            (json!({"every": "0s"}), Some("schedule.every"), "`0s` is too short"),
            (json!({"every": "10 parsecs"}), Some("schedule.every"), "invalid duration `10 parsecs`"),
            (json!({"every": 5}), Some("schedule.every"), "expected a duration"),
            (json!({"every": "5m", "times": 0}), Some("schedule.times"), "expected a count (1 or more), got 0"),
            (json!({"every": "5m", "timezone": "UTC"}), Some("schedule.timezone"), "only for `cron` schedules"),
            (json!({"cron": "0 0 2 * * ?", "times": 3}), Some("schedule.times"), "only for `every` schedules"),
            (json!({"cron": "0 0 2 * * ?", "misfire": "sometimes"}), Some("schedule.misfire"), "unknown MisfirePolicy `sometimes`"),
            (json!({"cron": "0 0 2 * * ?", "start": "yesterday"}), Some("schedule.start"), "expected a date (2026-01-01) or an RFC 3339 time"),
            (json!({"cron": "0 0 2 * * ?", "start": "2026-02-30"}), Some("schedule.start"), "expected a date"),
            (json!({"cron": "0 0 2 * * ?", "start": "2026-02-01", "end": "2026-01-01"}), Some("schedule.end"), "must be after `start`"),
            (json!("daily"), Some("schedule"), "a schedule is a mapping"),
        ];
        for (value, field, message) in cases {
            let e = read(value.clone()).unwrap_err();
            assert_eq!(e.field.as_deref(), field, "{value}: {e}");
            assert!(e.message.starts_with(message), "{value}\n  expected: {message}\n  got:      {}", e.message);
        }
        // As the API's body: paths without a prefix.
        let e = schedule_from_value(json!({"cron": "0 61 2 * * ?"}), "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cron"));
        let e = schedule_from_value(json!({}), "").unwrap_err();
        assert_eq!(e.field, None);
    }

    #[test]
    fn zoned_text_carries_the_offset() {
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(zoned_text(utc("2026-03-08T07:00:00Z"), ny), "2026-03-08T03:00:00-04:00");
        assert_eq!(zoned_text(utc("2026-01-08T07:30:00Z"), ny), "2026-01-08T02:30:00-05:00");
        assert_eq!(zoned_text(utc("2026-01-08T07:30:00Z"), Tz::UTC), "2026-01-08T07:30:00+00:00");
    }
}
