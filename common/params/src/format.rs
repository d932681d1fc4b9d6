//! Date patterns in the Java `SimpleDateFormat` style users of
//! DolphinScheduler and hera write (`yyyyMMdd`, `yyyy-MM-dd HH:mm:ss`).

use chrono::{Datelike, NaiveDateTime, Timelike};

use crate::ExprError;

/// Formats `t` with a Java-style pattern: `yyyy`, `yy`, `MM`, `M`, `dd`,
/// `d`, `HH`, `H`, `mm`, `m`, `ss`, `s`, `SSS`; text in single quotes and
/// any non-letter is copied as is. Other letters are refused, so a typo
/// fails the task instead of producing a wrong date.
pub fn format(t: &NaiveDateTime, pattern: &str) -> Result<String, ExprError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let end = chars[i + 1..].iter().position(|&x| x == '\'').map(|p| i + 1 + p).unwrap_or(chars.len());
            out.extend(&chars[i + 1..end]);
            i = end + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let field = match (c, run) {
            ('y', 2) => format!("{:02}", t.year().rem_euclid(100)),
            ('y', _) => format!("{:04}", t.year()),
            ('M', 1) => t.month().to_string(),
            ('M', _) => format!("{:02}", t.month()),
            ('d', 1) => t.day().to_string(),
            ('d', _) => format!("{:02}", t.day()),
            ('H', 1) => t.hour().to_string(),
            ('H', _) => format!("{:02}", t.hour()),
            ('m', 1) => t.minute().to_string(),
            ('m', _) => format!("{:02}", t.minute()),
            ('s', 1) => t.second().to_string(),
            ('s', _) => format!("{:02}", t.second()),
            ('S', _) => format!("{:03}", t.nanosecond() / 1_000_000),
            _ => {
                return Err(ExprError::new(pattern, format!("unsupported pattern letter `{c}`; use yyyy, MM, dd, HH, mm, ss")))
            }
        };
        out.push_str(&field);
        i += run;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    #[test]
    fn java_patterns() {
        let t = NaiveDate::from_ymd_opt(2024, 2, 9).unwrap().and_hms_milli_opt(7, 5, 3, 42).unwrap();
        assert_eq!(format(&t, "yyyyMMdd").unwrap(), "20240209");
        assert_eq!(format(&t, "yyyy-MM-dd HH:mm:ss").unwrap(), "2024-02-09 07:05:03");
        assert_eq!(format(&t, "yy/M/d H:m:s.SSS").unwrap(), "24/2/9 7:5:3.042");
        assert_eq!(format(&t, "'day' dd").unwrap(), "day 09");
        assert!(format(&t, "yyyyMMdd QQ").unwrap_err().to_string().contains("unsupported pattern letter `Q`"));
    }
}
