//! Markdown tables from results, with each throughput also given as a
//! ratio to a ceiling run (the same tool against a minimal server).

use std::fmt::Write;

use crate::result::{ScenarioResult, StepResult};
use crate::scenario::{E2e, Mode};

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn count(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn x_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Closed => "concurrency",
        Mode::Open => "rate/s",
    }
}

/// The ceiling's throughput at the same step, if it has one.
fn ceiling_at(ceiling: Option<&ScenarioResult>, step: &StepResult) -> Option<f64> {
    ceiling?
        .steps
        .iter()
        .find(|c| (c.x - step.x).abs() < 1e-9)
        .map(|c| c.throughput)
        .filter(|t| *t > 0.0)
}

/// A Markdown section for one scenario. Throughput is compared with the
/// ceiling only when both ran the same kind of loop.
pub fn markdown(r: &ScenarioResult, ceiling: Option<&ScenarioResult>) -> String {
    let ceiling = ceiling.filter(|c| c.mode == r.mode && c.name != r.name);
    let mut out = String::new();
    if r.description.is_empty() {
        let _ = writeln!(out, "### `{}`\n", r.name);
    } else {
        let _ = writeln!(out, "### `{}` — {}\n", r.name, r.description);
    }
    let _ = writeln!(
        out,
        "Target {}; {} loop; {} warm-up and {} measured per step; commit `{}`; {} × {} ({:.0} GiB), Linux {}; started {}.\n",
        r.target,
        match r.mode {
            Mode::Closed => "closed",
            Mode::Open => "open",
        },
        secs(r.warmup_s),
        secs(r.duration_s),
        r.commit,
        r.machine.cores,
        r.machine.cpu,
        r.machine.memory_gib,
        r.machine.kernel,
        r.started_at
    );
    let _ = writeln!(out, "```sh\n{}\n```\n", r.command);
    let e2e = r.e2e != E2e::None;
    let mut head = format!("| {} | sent | ok/s |", x_label(r.mode));
    if ceiling.is_some() {
        head.push_str(" × ceiling |");
    }
    head.push_str(" goodput/s |");
    if r.e2e != E2e::Wait {
        head.push_str(" submit p50 | p90 | p99 | p99.9 |");
    }
    if e2e {
        head.push_str(" e2e p50 | e2e p99 |");
    }
    let limits = r.steps.iter().any(|s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.limit_range().is_some())
    });
    head.push_str(" refused (p99 ms) | errors | max queued |");
    if limits {
        head.push_str(" limit min–max |");
    }
    head.push_str(" CPU gen / server | notes |");
    let cols = head.matches('|').count() - 1;
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "|{}", "---|".repeat(cols));
    for s in &r.steps {
        let mut row = format!("| {} | {} | {} |", count(s.x), s.sent, count(s.throughput));
        if ceiling.is_some() {
            row.push_str(&match ceiling_at(ceiling, s) {
                Some(c) => format!(" {:.2} |", s.throughput / c),
                None => " – |".into(),
            });
        }
        row.push_str(&format!(
            " {} |",
            s.goodput.map(count).unwrap_or_else(|| "–".into())
        ));
        if r.e2e != E2e::Wait {
            let l = s.submit;
            row.push_str(&format!(
                " {} | {} | {} | {} |",
                ms(l.map(|l| l.p50)),
                ms(l.map(|l| l.p90)),
                ms(l.map(|l| l.p99)),
                ms(l.map(|l| l.p999))
            ));
        }
        if e2e {
            row.push_str(&format!(
                " {} | {} |",
                ms(s.e2e.map(|l| l.p50)),
                ms(s.e2e.map(|l| l.p99))
            ));
        }
        let refused = if s.rejected == 0 {
            "0".to_string()
        } else {
            format!("{} ({})", s.rejected, ms(s.rejection.map(|l| l.p99)))
        };
        let max_q = s
            .status
            .as_ref()
            .map(|st| st.max_queued().to_string())
            .unwrap_or_else(|| "–".into());
        let cpu = format!(
            "{:.2} / {}",
            s.generator_cores,
            s.server_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "–".into())
        );
        let mut notes = s.notes.join("; ");
        if s.generator_bound {
            notes = if notes.is_empty() {
                "**generator-bound**".into()
            } else {
                format!("**generator-bound**; {notes}")
            };
        }
        row.push_str(&format!(" {refused} | {} | {max_q} |", s.errors));
        if limits {
            row.push_str(&match s.status.as_ref().and_then(|st| st.limit_range()) {
                Some((lo, hi)) => format!(" {lo}–{hi} |"),
                None => " – |".into(),
            });
        }
        row.push_str(&format!(" {cpu} | {notes} |"));
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(
        out,
        "\nLatencies in ms. *ok/s*: 2xx answers per second; *goodput*: tasks that ended `succeeded` per second; \
         *CPU*: cores used by the load generator and by the server. A step is **generator-bound** when the \
         machine was over 90% busy and the generator held at least 40% of that.\n"
    );
    labels(&mut out, r);
    phases(&mut out, r);
    out
}

/// Rows step × label, when the mix has labels.
fn labels(out: &mut String, r: &ScenarioResult) {
    if r.steps.iter().all(|s| s.by_label.is_empty()) {
        return;
    }
    let e2e = r.e2e != E2e::None;
    let lat = if e2e { "e2e" } else { "submit" };
    let _ = writeln!(out, "#### Per label\n");
    let _ = writeln!(
        out,
        "| {} | label | sent/s | accepted | refused | goodput/s | {lat} p50 | {lat} p99 |",
        x_label(r.mode)
    );
    let _ = writeln!(out, "|{}", "---|".repeat(8));
    for s in &r.steps {
        let window = s.window_s.max(1e-9);
        for (label, l) in &s.by_label {
            let lat = if e2e { l.e2e } else { l.submit };
            let _ = writeln!(
                out,
                "| {} | {label} | {} | {} | {} | {} | {} | {} |",
                count(s.x),
                count(l.sent as f64 / window),
                l.accepted,
                l.rejected,
                l.goodput.map(count).unwrap_or_else(|| "–".into()),
                ms(lat.map(|l| l.p50)),
                ms(lat.map(|l| l.p99)),
            );
        }
    }
    let _ = writeln!(out);
}

/// One table per phased step.
fn phases(out: &mut String, r: &ScenarioResult) {
    for s in r.steps.iter().filter(|s| !s.phases.is_empty()) {
        let _ = writeln!(out, "#### Phases at {} {}\n", x_label(r.mode), count(s.x));
        let _ = writeln!(
            out,
            "| phase | factor | rate/s | duration | goodput/s | accepted | refused (p99 ms) | e2e p50 | e2e p99 | recovery s |"
        );
        let _ = writeln!(out, "|{}", "---|".repeat(10));
        for (i, p) in s.phases.iter().enumerate() {
            let refused = if p.rejected == 0 {
                "0".to_string()
            } else {
                format!("{} ({})", p.rejected, ms(p.rejection.map(|l| l.p99)))
            };
            let recovery = match (i, p.recovery_s) {
                (0, _) => "–".to_string(),
                (_, Some(v)) => format!("{v:.1}"),
                (_, None) => "never".to_string(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {refused} | {} | {} | {recovery} |",
                p.label,
                p.factor,
                count(p.rate),
                secs(p.duration_s),
                count(p.goodput),
                p.accepted,
                ms(p.e2e.map(|l| l.p50)),
                ms(p.e2e.map(|l| l.p99)),
            );
        }
        let _ = writeln!(out);
    }
    if r.steps.iter().any(|s| !s.phases.is_empty()) {
        let _ = writeln!(
            out,
            "Per phase: *goodput* counts requests by when they ended{}; latencies are of the requests sent in the \
             phase, from their intended send time. *Recovery*: seconds from the phase's start to the first 1 s window \
             (slid by 100 ms) with goodput ≥ 90% and e2e p99 ≤ 1.25× the phase's last half.\n",
            if r.e2e == E2e::None {
                " (without end-to-end following, a 2xx answer counts as done: e2e is until the answer)"
            } else {
                ""
            }
        );
    }
}

fn secs(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::LatencySummary;
    use crate::result::Machine;

    fn result(name: &str, steps: &[(f64, f64)]) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            description: "d".into(),
            command: "swarmd bench --scenario x.toml".into(),
            commit: "abc".into(),
            machine: Machine {
                cores: 2,
                cpu: "cpu".into(),
                memory_gib: 24.0,
                kernel: "6".into(),
            },
            started_at: "now".into(),
            target: "swarmd (sqlite)".into(),
            mode: Mode::Closed,
            e2e: E2e::None,
            warmup_s: 1.0,
            duration_s: 5.0,
            steps: steps
                .iter()
                .map(|(x, t)| StepResult {
                    x: *x,
                    throughput: *t,
                    sent: 10,
                    submit: Some(LatencySummary {
                        p50: 1.234,
                        p99: 12.5,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn tables_have_one_row_per_step_and_ratios_to_the_ceiling() {
        let r = result("echo", &[(1.0, 500.0), (10.0, 2000.0)]);
        let c = result("hello", &[(1.0, 1000.0), (10.0, 8000.0)]);
        let md = markdown(&r, Some(&c));
        assert!(
            md.contains("| concurrency | sent | ok/s | × ceiling |"),
            "{md}"
        );
        assert!(md.contains("| 1 | 10 | 500 | 0.50 |"), "{md}");
        assert!(md.contains("| 10 | 10 | 2000 | 0.25 |"), "{md}");
        assert!(md.contains("1.23 |"), "{md}");
        assert!(md.contains("swarmd bench --scenario x.toml"));
        let header = md.lines().find(|l| l.starts_with("| concurrency")).unwrap();
        let sep = md.lines().find(|l| l.starts_with("|---")).unwrap();
        assert_eq!(header.matches('|').count(), sep.matches('|').count());
        let without = markdown(&r, None);
        assert!(!without.contains("ceiling |"));
    }

    #[test]
    fn flags_show_in_notes() {
        let mut r = result("echo", &[(1.0, 5.0)]);
        r.steps[0].generator_bound = true;
        r.steps[0].notes.push("sends fell behind".into());
        let md = markdown(&r, None);
        assert!(
            md.contains("**generator-bound**; sends fell behind"),
            "{md}"
        );
    }

    #[test]
    fn old_results_without_new_fields_render_unchanged() {
        let r = result("echo", &[(1.0, 5.0)]);
        let md = markdown(&r, None);
        assert!(!md.contains("Per label") && !md.contains("Phases") && !md.contains("limit"));
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains("by_label") && !json.contains("phases") && !json.contains("timeline")
        );
        let back: ScenarioResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn labels_get_rows_per_step_and_label() {
        use crate::result::LabelResult;
        let mut r = result("fair", &[(10.0, 5.0), (20.0, 9.0)]);
        r.e2e = E2e::Poll;
        for s in &mut r.steps {
            s.window_s = 2.0;
            for (name, sent) in [("heavy", 90u64), ("light", 10)] {
                s.by_label.insert(
                    name.into(),
                    LabelResult {
                        sent,
                        accepted: sent - 2,
                        rejected: 2,
                        goodput: Some(sent as f64 / 4.0),
                        e2e: Some(LatencySummary {
                            p50: 12.0,
                            p99: 250.0,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                );
            }
        }
        let md = markdown(&r, None);
        assert!(md.contains("#### Per label"), "{md}");
        assert!(
            md.contains("| concurrency | label | sent/s | accepted | refused | goodput/s | e2e p50 | e2e p99 |"),
            "{md}"
        );
        assert!(
            md.contains("| 10 | heavy | 45 | 88 | 2 | 22.5 | 12.0 | 250 |"),
            "{md}"
        );
        assert!(
            md.contains("| 20 | light | 5 | 8 | 2 | 2.5 | 12.0 | 250 |"),
            "{md}"
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: ScenarioResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn phased_steps_get_a_table_each_and_pool_limits_show() {
        use crate::result::{PhaseResult, StatusSeries};
        let mut r = result("recovery", &[(100.0, 100.0)]);
        r.mode = Mode::Open;
        r.e2e = E2e::Wait;
        let phase = |label: &str, factor: f64, recovery_s: Option<f64>| PhaseResult {
            label: label.into(),
            factor,
            rate: 100.0 * factor,
            duration_s: 10.0,
            goodput: 95.5,
            accepted: 900,
            rejected: 100,
            rejection: Some(LatencySummary {
                p99: 1.5,
                ..Default::default()
            }),
            e2e: Some(LatencySummary {
                p50: 50.0,
                p99: 1200.0,
                ..Default::default()
            }),
            recovery_s,
            ..Default::default()
        };
        r.steps[0].phases = vec![
            phase("normal", 1.0, None),
            phase("overload", 10.0, Some(2.3)),
            phase("after", 1.0, None),
        ];
        r.steps[0].status = Some(StatusSeries {
            t_s: vec![0.0, 1.0],
            limit: vec![40, 8],
            ..Default::default()
        });
        let md = markdown(&r, None);
        assert!(md.contains("#### Phases at rate/s 100"), "{md}");
        assert!(
            md.contains("| normal | 1 | 100 | 10 s | 95.5 | 900 | 100 (1.50) | 50.0 | 1200 | – |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| overload | 10 | 1000 | 10 s | 95.5 | 900 | 100 (1.50) | 50.0 | 1200 | 2.3 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| after | 1 | 100 | 10 s |") && md.contains("| never |"),
            "{md}"
        );
        assert!(
            md.contains("| limit min–max |") && md.contains("| 8–40 |"),
            "{md}"
        );
        let header = md
            .lines()
            .find(|l| l.starts_with("| rate/s | sent"))
            .unwrap();
        let row = md.lines().find(|l| l.starts_with("| 100 | 10 |")).unwrap();
        assert_eq!(
            header.matches('|').count(),
            row.matches('|').count(),
            "{md}"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"recovery_s\":null"), "{json}");
        let back: ScenarioResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
