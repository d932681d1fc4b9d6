//! An instant seen in a time zone, with the two kinds of arithmetic users
//! mean: calendar (whole days, months: the wall clock moves, DST or not) and
//! elapsed (hours, minutes: real time passes).

use chrono::{DateTime, Datelike, Duration, LocalResult, Months, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zoned {
    pub instant: DateTime<Utc>,
    pub tz: Tz,
}

impl Zoned {
    pub fn new(instant: DateTime<Utc>, tz: Tz) -> Self {
        Zoned { instant, tz }
    }

    /// The wall-clock date and time in the zone.
    pub fn local(&self) -> NaiveDateTime {
        self.instant.with_timezone(&self.tz).naive_local()
    }

    /// Back from a wall-clock time to an instant. A time the zone skips
    /// (spring forward) moves forward by the gap; a time it repeats (fall
    /// back) takes the earlier instant. `None` past the end of time.
    fn at_local(&self, local: NaiveDateTime) -> Option<Zoned> {
        let instant = match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t,
            LocalResult::Ambiguous(earlier, _) => earlier,
            // Read the skipped time with the offset in force before the
            // gap: 02:30 on a night that jumps 02:00 -> 03:00 is 03:30.
            LocalResult::None => {
                let before = self.tz.from_local_datetime(&local.checked_sub_signed(Duration::hours(3))?).earliest()?;
                let offset = Duration::seconds(before.offset().fix().local_minus_utc() as i64);
                self.tz.from_utc_datetime(&local.checked_sub_signed(offset)?)
            }
        };
        Some(Zoned { instant: instant.with_timezone(&Utc), tz: self.tz })
    }

    // Every move below is `None` when it leaves the dates chrono can hold
    // (some 260,000 years either way): a user's `$[yyyyMMdd+999999999]`
    // is a mistake to report, not a reason to panic.

    pub fn add_days(&self, days: i64) -> Option<Zoned> {
        self.at_local(self.local().checked_add_signed(Duration::try_days(days)?)?)
    }

    /// Months with the day clamped to the month's end (Jan 31 + 1 month is
    /// the last day of February).
    pub fn add_months(&self, months: i64) -> Option<Zoned> {
        let local = self.local();
        let by = Months::new(u32::try_from(months.unsigned_abs()).ok()?);
        let moved = if months >= 0 { local.checked_add_months(by) } else { local.checked_sub_months(by) };
        self.at_local(moved?)
    }

    /// Real time passing: `millis` milliseconds.
    pub fn add_millis(&self, millis: i64) -> Option<Zoned> {
        Some(Zoned { instant: self.instant.checked_add_signed(Duration::try_milliseconds(millis)?)?, tz: self.tz })
    }

    /// The first day of the month `months` away (time of day kept).
    pub fn month_first_day(&self, months: i64) -> Option<Zoned> {
        let moved = self.add_months(months)?;
        let local = moved.local();
        moved.at_local(local.with_day(1).unwrap_or(local))
    }

    /// The last day of the month `months` away.
    pub fn month_last_day(&self, months: i64) -> Option<Zoned> {
        self.month_first_day(months.checked_add(1)?)?.add_days(-1)
    }

    /// The Monday of the week `weeks` away.
    pub fn week_first_day(&self, weeks: i64) -> Option<Zoned> {
        let back = self.local().weekday().num_days_from_monday() as i64;
        self.add_days(weeks.checked_mul(7)?.checked_sub(back)?)
    }

    /// The Sunday of the week `weeks` away.
    pub fn week_last_day(&self, weeks: i64) -> Option<Zoned> {
        self.week_first_day(weeks)?.add_days(6)
    }

    /// (week-based year, week number) with weeks starting on `first_day`
    /// (1 = Monday … 7 = Sunday) and the first week of a year being the one
    /// holding at least four of its days: ISO 8601 for Monday.
    pub fn year_week(&self, first_day: u32) -> (i32, u32) {
        let date = self.local().date();
        let since_start = (date.weekday().number_from_monday() + 7 - first_day) % 7;
        let thursday_like = date - Duration::days(since_start as i64) + Duration::days(3);
        (thursday_like.year(), (thursday_like.ordinal() - 1) / 7 + 1)
    }
}
