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
    head.push_str(" refused (p99 ms) | errors | max queued | CPU gen / server | notes |");
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
        row.push_str(&format!(
            " {refused} | {} | {max_q} | {cpu} | {notes} |",
            s.errors
        ));
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(
        out,
        "\nLatencies in ms. *ok/s*: 2xx answers per second; *goodput*: tasks that ended `succeeded` per second; \
         *CPU*: cores used by the load generator and by the server. A step is **generator-bound** when the \
         machine was over 90% busy and the generator held at least 40% of that.\n"
    );
    out
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
}
