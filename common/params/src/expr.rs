//! Time expressions: DolphinScheduler's `$[...]` and hera's `${zdt...}`.

use crate::format::format;
use crate::time::Zoned;
use crate::ExprError;

const OUT_OF_RANGE: &str = "the date it gives is out of range";

/// Evaluates the inside of `$[...]` against the schedule time.
///
/// - `yyyyMMdd`, `yyyyMMdd-1`, `yyyyMMdd+7*2`: a pattern and an offset in
///   days. Whole days move the calendar (the wall clock stays put across
///   DST); fractions (`HHmmss-1/24`, `-30/24/60`) are elapsed time.
/// - `add_months(pattern,n)`, `this_day(pattern)`, `last_day(pattern)`,
///   `month_first_day(pattern,n)`, `month_last_day(pattern,n)`,
///   `week_first_day(pattern,n)`, `week_last_day(pattern,n)` (weeks start on
///   Monday), `year_week(pattern[,first_day])` (ISO weeks by default).
pub fn dollar_bracket(body: &str, at: &Zoned) -> Result<String, ExprError> {
    let whole = format!("$[{body}]");
    let fail = |message: String| ExprError::new(&whole, message);
    let body = body.trim();
    if let Some((name, args)) = call(body) {
        let arg_int = |i: usize, default: Option<i64>| -> Result<i64, ExprError> {
            match args.get(i) {
                Some(raw) => raw.trim().parse::<i64>().map_err(|_| fail(format!("`{}` is not a whole number", raw.trim()))),
                None => default.ok_or_else(|| fail(format!("{name} needs {} arguments", i + 1))),
            }
        };
        let pattern = args.first().map(|p| p.trim()).filter(|p| !p.is_empty()).ok_or_else(|| fail(format!("{name} needs a date pattern")))?;
        let max_args = match name {
            "this_day" | "last_day" => 1,
            _ => 2,
        };
        if args.len() > max_args {
            return Err(fail(format!("{name} takes at most {max_args} arguments")));
        }
        let moved = match name {
            "add_months" => at.add_months(arg_int(1, None)?),
            "this_day" => Some(*at),
            "last_day" => at.add_days(-1),
            "month_first_day" => at.month_first_day(arg_int(1, Some(0))?),
            "month_last_day" => at.month_last_day(arg_int(1, Some(0))?),
            "week_first_day" => at.week_first_day(arg_int(1, Some(0))?),
            "week_last_day" => at.week_last_day(arg_int(1, Some(0))?),
            "year_week" => {
                let first = arg_int(1, Some(1))?;
                if !(1..=7).contains(&first) {
                    return Err(fail(format!("year_week's first day of the week is 1 (Monday) to 7 (Sunday), got {first}")));
                }
                let (year, week) = at.year_week(first as u32);
                let separator: String = pattern.chars().find(|c| !c.is_ascii_alphabetic()).map(String::from).unwrap_or_default();
                return Ok(format!("{year}{separator}{week:02}"));
            }
            other => return Err(fail(format!("unknown function `{other}`"))),
        };
        let moved = moved.ok_or_else(|| fail(OUT_OF_RANGE.into()))?;
        return format(&moved.local(), pattern).map_err(|e| fail(e.message));
    }
    let (pattern, offset) = split_offset(body);
    if pattern.is_empty() {
        return Err(fail("no date pattern".into()));
    }
    let moved = match offset {
        None => Some(*at),
        Some(offset) => {
            let days = arithmetic(offset).map_err(|m| fail(format!("offset `{offset}`: {m}")))?;
            // `as` saturates: an offset too large for an i64 is out of
            // range below like any other.
            if days.fract() == 0.0 {
                at.add_days(days as i64)
            } else {
                at.add_millis((days * 86_400_000.0).round() as i64)
            }
        }
    };
    let moved = moved.ok_or_else(|| fail(OUT_OF_RANGE.into()))?;
    format(&moved.local(), pattern).map_err(|e| fail(e.message))
}

/// `name(args)` with a lowercase identifier.
fn call(body: &str) -> Option<(&str, Vec<&str>)> {
    let open = body.find('(')?;
    let name = &body[..open];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') || !body.ends_with(')') {
        return None;
    }
    Some((name, body[open + 1..body.len() - 1].split(',').collect()))
}

/// Splits `yyyy-MM-dd-1` into the pattern and the longest trailing
/// arithmetic that starts with `+` or `-` (the pattern itself may hold
/// dashes, but never right before a digit).
fn split_offset(body: &str) -> (&str, Option<&str>) {
    let is_arith = |c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*' | '/' | '.' | ' ' | '(' | ')');
    let mut best = None;
    for (i, c) in body.char_indices().rev() {
        if !is_arith(c) {
            break;
        }
        if matches!(c, '+' | '-') && body[i + 1..].trim_start().starts_with(|d: char| d.is_ascii_digit() || d == '(') {
            best = Some(i);
        }
    }
    match best {
        Some(i) => (body[..i].trim_end(), Some(&body[i..])),
        None => (body, None),
    }
}

/// `+`, `-`, `*`, `/` and parentheses over decimal numbers.
fn arithmetic(text: &str) -> Result<f64, String> {
    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }
    impl P<'_> {
        fn ws(&mut self) {
            while self.s.get(self.i) == Some(&b' ') {
                self.i += 1;
            }
        }
        fn expr(&mut self) -> Result<f64, String> {
            let mut v = self.term()?;
            loop {
                self.ws();
                match self.s.get(self.i) {
                    Some(b'+') => { self.i += 1; v += self.term()?; }
                    Some(b'-') => { self.i += 1; v -= self.term()?; }
                    _ => return Ok(v),
                }
            }
        }
        fn term(&mut self) -> Result<f64, String> {
            let mut v = self.factor()?;
            loop {
                self.ws();
                match self.s.get(self.i) {
                    Some(b'*') => { self.i += 1; v *= self.factor()?; }
                    Some(b'/') => {
                        self.i += 1;
                        let d = self.factor()?;
                        if d == 0.0 {
                            return Err("division by zero".into());
                        }
                        v /= d;
                    }
                    _ => return Ok(v),
                }
            }
        }
        fn factor(&mut self) -> Result<f64, String> {
            self.ws();
            match self.s.get(self.i) {
                Some(b'-') => { self.i += 1; Ok(-self.factor()?) }
                Some(b'+') => { self.i += 1; self.factor() }
                Some(b'(') => {
                    self.i += 1;
                    let v = self.expr()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b')') {
                        return Err("missing `)`".into());
                    }
                    self.i += 1;
                    Ok(v)
                }
                _ => {
                    let start = self.i;
                    while self.s.get(self.i).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
                        self.i += 1;
                    }
                    std::str::from_utf8(&self.s[start..self.i]).ok().and_then(|n| n.parse().ok()).ok_or_else(|| "expected a number".to_string())
                }
            }
        }
    }
    let mut p = P { s: text.as_bytes(), i: 0 };
    let v = p.expr()?;
    p.ws();
    if p.i != text.len() {
        return Err(format!("unexpected `{}`", &text[p.i..]));
    }
    Ok(v)
}

/// Evaluates hera's `zdt` expression (the inside of `${...}`), e.g.
/// `zdt.addDay(-1).format("yyyyMMdd")`: methods `addYear`, `addMonth`,
/// `addWeek`, `addDay`, `addHour`, `addMinute`, `addSecond` (n),
/// `add(field, n)` with a `java.util.Calendar` field number (1 year, 2 month,
/// 3 week, 5/6 day, 10/11 hour, 12 minute, 13 second) or name, and a final
/// `format(pattern)`; without `format` the result is `yyyy-MM-dd HH:mm:ss`.
pub fn zdt(body: &str, at: &Zoned) -> Result<String, ExprError> {
    let whole = format!("${{{body}}}");
    let fail = |message: String| ExprError::new(&whole, message);
    let mut rest = body.trim().strip_prefix("zdt").ok_or_else(|| fail("expected `zdt`".into()))?.trim_start();
    let mut t = *at;
    let mut pattern: Option<String> = None;
    while !rest.is_empty() {
        if pattern.is_some() {
            return Err(fail("`format(...)` must come last".into()));
        }
        rest = rest.strip_prefix('.').ok_or_else(|| fail(format!("unexpected `{rest}`")))?;
        let open = rest.find('(').ok_or_else(|| fail(format!("`{rest}` is not a method call")))?;
        let method = rest[..open].trim();
        let close = matching_paren(rest, open).ok_or_else(|| fail(format!("unclosed `(` after `{method}`")))?;
        let args: Vec<&str> = split_args(&rest[open + 1..close]);
        rest = rest[close + 1..].trim_start();
        let int = |i: usize| -> Result<i64, ExprError> {
            args.get(i).ok_or_else(|| fail(format!("{method} needs {} argument(s)", i + 1)))?
                .trim().parse::<i64>().map_err(|_| fail(format!("{method}: `{}` is not a whole number", args[i].trim())))
        };
        let scaled = |n: i64, by: i64| n.checked_mul(by).ok_or_else(|| fail(OUT_OF_RANGE.into()));
        let moved = match method {
            "addYear" | "addYears" => t.add_months(scaled(int(0)?, 12)?),
            "addMonth" | "addMonths" => t.add_months(int(0)?),
            "addWeek" | "addWeeks" => t.add_days(scaled(int(0)?, 7)?),
            "addDay" | "addDays" => t.add_days(int(0)?),
            "addHour" | "addHours" => t.add_millis(scaled(int(0)?, 3_600_000)?),
            "addMinute" | "addMinutes" => t.add_millis(scaled(int(0)?, 60_000)?),
            "addSecond" | "addSeconds" => t.add_millis(scaled(int(0)?, 1_000)?),
            "add" => {
                let field = args.first().map(|f| f.trim()).unwrap_or("");
                let n = int(1)?;
                match field.trim_start_matches("Calendar.") {
                    "1" | "YEAR" | "year" => t.add_months(scaled(n, 12)?),
                    "2" | "MONTH" | "month" => t.add_months(n),
                    "3" | "4" | "WEEK_OF_YEAR" | "WEEK_OF_MONTH" | "week" => t.add_days(scaled(n, 7)?),
                    "5" | "6" | "7" | "DATE" | "DAY_OF_MONTH" | "DAY_OF_YEAR" | "DAY_OF_WEEK" | "day" => t.add_days(n),
                    "10" | "11" | "HOUR" | "HOUR_OF_DAY" | "hour" => t.add_millis(scaled(n, 3_600_000)?),
                    "12" | "MINUTE" | "minute" => t.add_millis(scaled(n, 60_000)?),
                    "13" | "SECOND" | "second" => t.add_millis(scaled(n, 1_000)?),
                    other => return Err(fail(format!("unknown field `{other}` for add"))),
                }
            }
            "format" => {
                let raw = args.first().map(|a| a.trim()).unwrap_or("");
                let unquoted = raw
                    .strip_prefix('"').and_then(|r| r.strip_suffix('"'))
                    .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
                    .ok_or_else(|| fail("format needs a quoted pattern".into()))?;
                pattern = Some(unquoted.to_owned());
                Some(t)
            }
            other => return Err(fail(format!("unknown method `{other}`"))),
        };
        t = moved.ok_or_else(|| fail(OUT_OF_RANGE.into()))?;
    }
    format(&t.local(), pattern.as_deref().unwrap_or("yyyy-MM-dd HH:mm:ss")).map_err(|e| fail(e.message))
}

fn matching_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn split_args(s: &str) -> Vec<&str> {
    if s.trim().is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, ',') => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_split_after_the_pattern() {
        assert_eq!(split_offset("yyyyMMdd-1"), ("yyyyMMdd", Some("-1")));
        assert_eq!(split_offset("yyyy-MM-dd-1"), ("yyyy-MM-dd", Some("-1")));
        assert_eq!(split_offset("yyyy-MM-dd"), ("yyyy-MM-dd", None));
        assert_eq!(split_offset("yyyyMMdd+7*2"), ("yyyyMMdd", Some("+7*2")));
        assert_eq!(split_offset("yyyy-MM-dd HH:mm:ss-30/24/60"), ("yyyy-MM-dd HH:mm:ss", Some("-30/24/60")));
        assert_eq!(split_offset("HHmmss-1/24"), ("HHmmss", Some("-1/24")));
    }

    #[test]
    fn arithmetic_follows_precedence() {
        assert_eq!(arithmetic("+7*2").unwrap(), 14.0);
        assert_eq!(arithmetic("-1/24").unwrap(), -1.0 / 24.0);
        assert_eq!(arithmetic("-30/24/60").unwrap(), -30.0 / 24.0 / 60.0);
        assert_eq!(arithmetic("-(1+1)*3").unwrap(), -6.0);
        assert!(arithmetic("-1/0").unwrap_err().contains("division by zero"));
        assert!(arithmetic("-1x").is_err());
    }
}
