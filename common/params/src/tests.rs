//! Every time expression at month ends, leap days, year ends and DST
//! changes, the built-ins, and parameter precedence.

use chrono::{NaiveDate, TimeZone};

use super::*;

/// A context whose schedule time is the wall-clock `local` in `tz`
/// (`yyyy-MM-dd HH:mm:ss`; for a repeated hour, `later` picks the second).
fn at_in(tz: &str, local: &str, later: bool) -> Context {
    let tz: Tz = tz.parse().unwrap();
    let naive = chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").unwrap();
    let instant = match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t,
        chrono::LocalResult::Ambiguous(a, b) => if later { b } else { a },
        chrono::LocalResult::None => panic!("{local} does not exist in {tz}"),
    };
    Context {
        schedule_time: instant.with_timezone(&Utc),
        timezone: tz,
        project: "demo".into(),
        workflow: "daily_etl".into(),
        workflow_instance_id: 42,
        task_instance_id: Some(7),
    }
}

fn at(local: &str) -> Context {
    at_in("Asia/Shanghai", local, false)
}

fn eval(ctx: &Context, text: &str) -> String {
    substitute(text, &Params::new(), ctx).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn check(cases: &[(&str, &str, &str)]) {
    for (when, expr, want) in cases {
        assert_eq!(eval(&at(when), expr), *want, "{expr} at {when}");
    }
}

#[test]
fn day_offsets_at_month_and_year_ends_and_leap_days() {
    check(&[
        ("2024-03-01 02:30:00", "$[yyyyMMdd]", "20240301"),
        ("2024-03-01 02:30:00", "$[yyyyMMdd-1]", "20240229"),
        ("2023-03-01 02:30:00", "$[yyyyMMdd-1]", "20230228"),
        ("2024-02-28 02:30:00", "$[yyyyMMdd+1]", "20240229"),
        ("2024-12-31 02:30:00", "$[yyyyMMdd+1]", "20250101"),
        ("2025-01-01 02:30:00", "$[yyyy-MM-dd-1]", "2024-12-31"),
        ("2024-12-25 02:30:00", "$[yyyyMMdd+7*2]", "20250108"),
        ("2024-02-15 02:30:00", "$[yyyyMMdd+14]", "20240229"),
        ("2024-01-01 00:30:00", "$[HHmmss-1/24]", "233000"),
        ("2025-01-01 00:10:00", "$[yyyy-MM-dd HH:mm:ss-30/24/60]", "2024-12-31 23:40:00"),
        ("2024-02-29 23:50:00", "$[yyyyMMdd HH:mm+1/24/6]", "20240301 00:00"),
    ]);
}

#[test]
fn month_functions_clamp_to_month_ends() {
    check(&[
        ("2024-03-31 02:30:00", "$[add_months(yyyyMMdd,-1)]", "20240229"),
        ("2023-03-31 02:30:00", "$[add_months(yyyyMMdd,-1)]", "20230228"),
        ("2024-01-15 02:30:00", "$[add_months(yyyyMMdd,-1)]", "20231215"),
        ("2024-01-31 02:30:00", "$[add_months(yyyy-MM-dd,1)]", "2024-02-29"),
        ("2024-02-29 02:30:00", "$[add_months(yyyyMMdd,12)]", "20250228"),
        ("2024-03-31 02:30:00", "$[month_first_day(yyyy-MM-dd,-1)]", "2024-02-01"),
        ("2025-01-15 02:30:00", "$[month_first_day(yyyy-MM-dd,-1)]", "2024-12-01"),
        ("2024-12-15 02:30:00", "$[month_first_day(yyyy-MM-dd,1)]", "2025-01-01"),
        ("2024-03-31 02:30:00", "$[month_last_day(yyyy-MM-dd,-1)]", "2024-02-29"),
        ("2023-03-05 02:30:00", "$[month_last_day(yyyy-MM-dd,-1)]", "2023-02-28"),
        ("2025-01-15 02:30:00", "$[month_last_day(yyyy-MM-dd,-1)]", "2024-12-31"),
        ("2024-02-10 02:30:00", "$[month_last_day(yyyy-MM-dd,0)]", "2024-02-29"),
        ("2024-12-10 02:30:00", "$[month_last_day(yyyyMMdd,0)]", "20241231"),
    ]);
}

#[test]
fn day_and_week_functions_across_year_ends() {
    check(&[
        ("2024-02-29 02:30:00", "$[this_day(yyyy-MM-dd)]", "2024-02-29"),
        ("2024-03-01 02:30:00", "$[last_day(yyyy-MM-dd)]", "2024-02-29"),
        ("2025-01-01 02:30:00", "$[last_day(yyyyMMdd)]", "20241231"),
        // 2024-01-03 is a Wednesday; weeks start on Monday.
        ("2024-01-03 02:30:00", "$[week_first_day(yyyy-MM-dd,0)]", "2024-01-01"),
        ("2025-01-01 02:30:00", "$[week_first_day(yyyy-MM-dd,0)]", "2024-12-30"),
        ("2024-12-31 02:30:00", "$[week_last_day(yyyy-MM-dd,0)]", "2025-01-05"),
        ("2024-03-01 02:30:00", "$[week_first_day(yyyy-MM-dd,-1)]", "2024-02-19"),
        ("2024-02-26 02:30:00", "$[week_last_day(yyyy-MM-dd,0)]", "2024-03-03"),
        ("2024-03-03 02:30:00", "$[week_first_day(yyyyMMdd,0)]", "20240226"),
    ]);
}

#[test]
fn year_week_follows_iso_weeks_by_default() {
    check(&[
        ("2024-12-30 02:30:00", "$[year_week(yyyy-MM-dd)]", "2025-01"),
        ("2021-01-03 02:30:00", "$[year_week(yyyy-MM-dd)]", "2020-53"),
        ("2021-01-03 02:30:00", "$[year_week(yyyyMMdd)]", "202053"),
        ("2024-02-29 02:30:00", "$[year_week(yyyy-MM-dd)]", "2024-09"),
        // Weeks starting on Sunday: 2021-01-03 is that week's first day.
        ("2021-01-03 02:30:00", "$[year_week(yyyy-MM-dd,7)]", "2021-01"),
    ]);
}

#[test]
fn calendar_days_keep_the_wall_clock_across_dst_and_fractions_are_real_time() {
    let ny = |local: &str| at_in("America/New_York", local, false);
    // Spring forward: 2026-03-08 02:00 EST -> 03:00 EDT.
    assert_eq!(eval(&ny("2026-03-09 08:00:00"), "$[yyyyMMdd HH:mm-1]"), "20260308 08:00");
    assert_eq!(eval(&ny("2026-03-08 03:30:00"), "$[HH:mm-1/24]"), "01:30", "one real hour before 03:30 EDT is 01:30 EST");
    // 02:30 does not exist on 2026-03-08: the day before 02:30 on the 9th moves past the gap.
    assert_eq!(eval(&ny("2026-03-09 02:30:00"), "$[yyyy-MM-dd HH:mm-1]"), "2026-03-08 03:30");
    assert_eq!(eval(&ny("2026-03-09 00:30:00"), "${system.biz.date}"), "20260308");
    // Fall back: 2026-11-01 02:00 EDT -> 01:00 EST; 01:30 happens twice.
    let second = at_in("America/New_York", "2026-11-01 01:30:00", true);
    assert_eq!(eval(&second, "$[HH:mm-1/24]"), "01:30", "an hour before the second 01:30 is the first");
    assert_eq!(eval(&ny("2026-11-02 01:30:00"), "$[yyyyMMdd HH:mm-1]"), "20261101 01:30");
    assert_eq!(eval(&ny("2026-11-01 03:00:00"), "$[HH:mm-3/24]"), "01:00", "three real hours across the repeated hour");
    // Europe/Berlin: 2026-03-29 02:00 -> 03:00; days still move by calendar.
    let berlin = at_in("Europe/Berlin", "2026-03-30 02:30:00", false);
    assert_eq!(eval(&berlin, "$[yyyy-MM-dd HH:mm-1]"), "2026-03-29 03:30");
    assert_eq!(eval(&berlin, "$[add_months(yyyy-MM-dd HH:mm,-1)]"), "2026-02-28 02:30");
}

#[test]
fn builtins_are_relative_to_the_schedule_time() {
    let ctx = at("2024-03-01 02:30:05");
    assert_eq!(eval(&ctx, "${system.biz.date}"), "20240229");
    assert_eq!(eval(&ctx, "${system.biz.curdate}"), "20240301");
    assert_eq!(eval(&ctx, "${system.datetime}"), "20240301023005");
    assert_eq!(eval(&ctx, "${system.workflow.instance.id}/${system.task.instance.id}"), "42/7");
    assert_eq!(eval(&ctx, "${system.project.name}.${system.workflow.name}"), "demo.daily_etl");
    assert_eq!(eval(&at("2025-01-01 00:00:00"), "${system.biz.date}"), "20241231");
}

#[test]
fn hera_zdt_expressions() {
    check(&[
        ("2024-03-01 02:30:00", "${zdt.addDay(-1).format(\"yyyyMMdd\")}", "20240229"),
        ("2024-03-31 02:30:00", "${zdt.addMonth(-1).addDay(-1).format(\"yyyy-MM-dd\")}", "2024-02-28"),
        ("2024-03-01 02:30:00", "${zdt.add(5,-1).format('yyyyMMdd')}", "20240229"),
        ("2024-12-15 02:30:00", "${zdt.add(Calendar.MONTH, 1).format(\"yyyyMM\")}", "202501"),
        ("2024-12-31 23:30:00", "${zdt.addHour(1).format(\"yyyy-MM-dd HH\")}", "2025-01-01 00"),
        ("2024-02-29 02:30:00", "${zdt.addYear(1).format(\"yyyyMMdd\")}", "20250228"),
        ("2024-02-29 02:30:00", "${zdt}", "2024-02-29 02:30:00"),
        ("2024-02-29 02:30:00", "${ zdt.addDay(1).format(\"yyyy/MM/dd\") }", "2024/03/01"),
    ]);
}

#[test]
fn unresolvable_expressions_name_themselves() {
    let ctx = at("2024-03-01 02:30:00");
    for (text, expr, message) in [
        ("echo $[yyyyMMdd-x]", "$[yyyyMMdd-x]", "unsupported pattern letter `x`"),
        ("$[-1]", "$[-1]", "no date pattern"),
        ("$[yyyyMMdd-1x]", "$[yyyyMMdd-1x]", "unsupported pattern letter `x`"),
        ("$[unknown_fn(yyyy)]", "$[unknown_fn(yyyy)]", "unknown function `unknown_fn`"),
        ("$[add_months(yyyyMMdd)]", "$[add_months(yyyyMMdd)]", "add_months needs 2 arguments"),
        ("$[month_first_day(yyyyMMdd,one)]", "$[month_first_day(yyyyMMdd,one)]", "`one` is not a whole number"),
        ("$[yyyyQQ]", "$[yyyyQQ]", "unsupported pattern letter `Q`"),
        ("$[year_week(yyyy-MM-dd,9)]", "$[year_week(yyyy-MM-dd,9)]", "1 (Monday) to 7 (Sunday)"),
        ("$[yyyyMMdd-1/0]", "$[yyyyMMdd-1/0]", "division by zero"),
        ("x $[yyyy", "$[yyyy", "missing `]`"),
        ("${system.nope}", "${system.nope}", "unknown built-in"),
        ("${zdt.addDays(x)}", "${zdt.addDays(x)}", "`x` is not a whole number"),
        ("${zdt.format(yyyy)}", "${zdt.format(yyyy)}", "format needs a quoted pattern"),
        ("${zdt.explode()}", "${zdt.explode()}", "unknown method `explode`"),
        ("${zdt.format(\"yyyy\").addDay(1)}", "${zdt.format(\"yyyy\").addDay(1)}", "`format(...)` must come last"),
        // Offsets past the dates chrono holds: an error, not a panic of
        // the master (or of the API checking a document).
        ("$[yyyyMMdd+999999999]", "$[yyyyMMdd+999999999]", "out of range"),
        ("$[yyyyMMdd-99999999999999999999]", "$[yyyyMMdd-99999999999999999999]", "out of range"),
        ("$[HHmmss+99999999999/24]", "$[HHmmss+99999999999/24]", "out of range"),
        ("$[add_months(yyyyMMdd,99999999999)]", "$[add_months(yyyyMMdd,99999999999)]", "out of range"),
        ("$[month_last_day(yyyyMMdd,9223372036854775807)]", "$[month_last_day(yyyyMMdd,9223372036854775807)]", "out of range"),
        ("$[week_first_day(yyyyMMdd,9223372036854775807)]", "$[week_first_day(yyyyMMdd,9223372036854775807)]", "out of range"),
        ("${zdt.addDay(999999999999)}", "${zdt.addDay(999999999999)}", "out of range"),
        ("${zdt.addHour(999999999999999)}", "${zdt.addHour(999999999999999)}", "out of range"),
        ("${zdt.addWeek(9223372036854775807)}", "${zdt.addWeek(9223372036854775807)}", "out of range"),
        ("${zdt.add(1, 999999999999)}", "${zdt.add(1, 999999999999)}", "out of range"),
    ] {
        let err = substitute(text, &Params::new(), &ctx).unwrap_err();
        assert_eq!(err.expression, expr, "{text}");
        assert!(err.message.contains(message), "{text}: {err}");
        assert!(err.to_string().starts_with(&format!("cannot resolve `{expr}`")), "{err}");
    }
}

#[test]
fn parameter_precedence() {
    let layer = |pairs: &[(&str, &str)]| -> Params { pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
    let layers = Layers {
        project: layer(&[("a", "project"), ("b", "project"), ("c", "project"), ("d", "project"), ("e", "project")]),
        workflow: layer(&[("b", "workflow"), ("c", "workflow"), ("d", "workflow"), ("e", "workflow")]),
        upstream: layer(&[("c", "upstream"), ("d", "upstream"), ("e", "upstream")]),
        task: layer(&[("d", "task"), ("e", "task")]),
        run: layer(&[("e", "run")]),
    };
    let merged = resolve(&layers, &at("2024-03-01 02:30:00")).unwrap();
    assert_eq!(merged, layer(&[("a", "project"), ("b", "workflow"), ("c", "upstream"), ("d", "task"), ("e", "run")]));
}

#[test]
fn parameters_refer_to_builtins_expressions_and_each_other() {
    let layers = Layers {
        workflow: [
            ("dt".to_string(), "${system.biz.date}".to_string()),
            ("path".to_string(), "/data/${dt}/$[yyyy-MM]".to_string()),
            ("month".to_string(), "$[add_months(yyyyMM,-1)]".to_string()),
        ]
        .into(),
        run: [("dt".to_string(), "20200101".to_string())].into(),
        ..Default::default()
    };
    let ctx = at("2024-03-01 02:30:00");
    let params = resolve(&layers, &ctx).unwrap();
    assert_eq!(params["dt"], "20200101", "the run-time value wins, also where it is used");
    assert_eq!(params["path"], "/data/20200101/2024-03");
    assert_eq!(params["month"], "202402");
    let script = substitute("echo ${dt} ${HOME} $HOME ${path} ${setValue(rows=1)} $5", &params, &ctx).unwrap();
    assert_eq!(script, "echo 20200101 ${HOME} $HOME /data/20200101/2024-03 ${setValue(rows=1)} $5");

    let cyclic = Layers { workflow: [("a".to_string(), "${b}".to_string()), ("b".to_string(), "x${a}".to_string())].into(), ..Default::default() };
    let err = resolve(&cyclic, &ctx).unwrap_err();
    assert!(err.message.contains("cycle: a -> b -> a"), "{err}");
}

#[test]
fn output_parameters_are_read_from_printed_lines() {
    let mut out = Params::new();
    output_params("loaded ${setValue(rows=42)} and ${setValue( file = a=b.csv )}", &mut out);
    output_params("no marker here", &mut out);
    output_params("${setValue(rows=43)}", &mut out);
    output_params("${setValue(broken", &mut out);
    assert_eq!(out.get("rows").map(String::as_str), Some("43"));
    assert_eq!(out.get("file").map(String::as_str), Some("a=b.csv"));
    assert_eq!(out.len(), 2);
}

#[test]
fn time_zones_are_named_when_unknown() {
    assert_eq!(timezone("Asia/Shanghai").unwrap(), chrono_tz::Asia::Shanghai);
    assert!(timezone("Mars/Olympus").unwrap_err().to_string().contains("unknown time zone"));
    let _ = NaiveDate::from_ymd_opt(2024, 1, 1);
}


fn params(pairs: &[(&str, &str)]) -> Params {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn what_fails_every_run_is_found_before_any_run() {
    for (pairs, name, message) in [
        (&[("ok", "$[yyyyMMdd-1]"), ("out", "$[foo+1]")][..], "out", "cannot resolve `$[foo+1]`: unsupported pattern letter `f`"),
        (&[("out", "x ${system.nope}")], "out", "cannot resolve `${system.nope}`: unknown built-in"),
        (&[("out", "${zdt.explode()}")], "out", "unknown method `explode`"),
        (&[("out", "$[yyyyMMdd")], "out", "missing `]`"),
        (&[("a", "${b}"), ("b", "x${a}")], "a", "parameters refer to each other in a cycle: a -> b -> a"),
        (&[("z", "${y}"), ("y", "${x}"), ("x", "-${y}")], "x", "cycle: x -> y -> x"),
        (&[("self", "${self}/more")], "self", "cycle: self -> self"),
    ] {
        let err = crate::check(&params(pairs)).unwrap_err();
        assert_eq!(err.name, name, "{pairs:?}: {err}");
        assert!(err.to_string().contains(message), "{pairs:?}: {err}");
    }
}

#[test]
fn what_only_a_run_knows_passes_the_check() {
    // Upstream outputs, run-time and project parameters, shell variables:
    // names the document does not define are left to the run.
    let ok = params(&[
        ("dt", "${system.biz.date}"),
        ("path", "/data/${dt}/${region}/${HOME}"),
        ("hour", "$[yyyyMMddHH-1/24] ${zdt.addDay(-1).format(\"yyyyMMdd\")}"),
        ("rows", "${rows_from_upstream}"),
        ("mark", "${setValue(x=1)}"),
        ("id", "${system.task.instance.id}"),
    ]);
    crate::check(&ok).unwrap();
    check_text("echo ${dt} $HOME ${HOME} $5 ${setValue(rows=1)} $[yyyyMMdd]").unwrap();
    assert!(check_text("echo ${system.nope}").unwrap_err().to_string().starts_with("cannot resolve `${system.nope}`"));
    // The check agrees with a run: what passes resolves.
    let layers = Layers { workflow: ok, ..Default::default() };
    resolve(&layers, &at("2024-03-01 02:30:00")).unwrap();
}
