//! A self-contained SVG chart of a scenario: latency percentiles (log scale,
//! left axis) and throughput (right axis) against concurrency or rate.
//! Written by hand so the bench needs no plotting library.

use std::fmt::Write;

use crate::result::ScenarioResult;
use crate::scenario::Mode;

const W: f64 = 760.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Maps a value range onto pixels, linearly or on a log10 scale.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    px0: f64,
    px1: f64,
}

impl Scale {
    fn new(lo: f64, hi: f64, log: bool, px0: f64, px1: f64) -> Self {
        let (lo, hi) = if log {
            (lo.max(1e-3).log10(), hi.max(lo.max(1e-3) * 1.0001).log10())
        } else {
            (lo, if hi > lo { hi } else { lo + 1.0 })
        };
        Self {
            lo,
            hi,
            log,
            px0,
            px1,
        }
    }

    fn at(&self, v: f64) -> f64 {
        let v = if self.log { v.max(1e-3).log10() } else { v };
        let f = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        self.px0 + f * (self.px1 - self.px0)
    }
}

/// Decades (1, 10, 100 …) between `lo` and `hi`, with 2 and 5 between them
/// when there are few.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut d = 10f64.powf(lo.max(1e-3).log10().floor());
    let dense = hi / lo.max(1e-3) < 1000.0;
    while d <= hi * 1.0001 {
        for m in if dense {
            &[1.0, 2.0, 5.0][..]
        } else {
            &[1.0][..]
        } {
            let t = d * m;
            if t >= lo * 0.9999 && t <= hi * 1.0001 {
                ticks.push(t);
            }
        }
        d *= 10.0;
    }
    ticks
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", (v / 100.0).round() / 10.0)
    } else if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The chart's title, cut to fit its width.
fn title(r: &ScenarioResult) -> String {
    let full = if r.description.is_empty() {
        r.name.clone()
    } else {
        format!("{} — {}", r.name, r.description)
    };
    if full.chars().count() > 95 {
        format!("{}…", full.chars().take(94).collect::<String>())
    } else {
        full
    }
}

/// The chart as SVG text.
pub fn plot(r: &ScenarioResult) -> String {
    let xs: Vec<f64> = r.steps.iter().map(|s| s.x).collect();
    let (xmin, xmax) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let xlog = xmax / xmin.max(1e-9) >= 20.0;
    let x = Scale::new(xmin, xmax, xlog, LEFT, W - RIGHT);
    // Latency series: submit percentiles, or end-to-end when there is no
    // separate acknowledgement.
    let lat = |f: &dyn Fn(&crate::recorder::LatencySummary) -> f64| -> Vec<Option<f64>> {
        r.steps
            .iter()
            .map(|s| s.submit.or(s.e2e).map(|l| f(&l)))
            .collect()
    };
    let mut series: Vec<(&str, &str, Vec<Option<f64>>, bool)> = vec![
        ("p50", "#1f77b4", lat(&|l| l.p50), false),
        ("p90", "#2ca02c", lat(&|l| l.p90), false),
        ("p99", "#d62728", lat(&|l| l.p99), false),
    ];
    if r.steps
        .iter()
        .any(|s| s.submit.is_some() && s.e2e.is_some())
    {
        series.push((
            "e2e p99",
            "#9467bd",
            r.steps.iter().map(|s| s.e2e.map(|l| l.p99)).collect(),
            true,
        ));
    }
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().flatten().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let (lmin, lmax) = if all.is_empty() {
        (0.1, 10.0)
    } else {
        all.iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)))
    };
    let (lmin, lmax) = (
        10f64.powf(lmin.log10().floor()),
        10f64.powf(lmax.log10().ceil()).max(lmin * 10.0),
    );
    let y = Scale::new(lmin, lmax, true, H - BOTTOM, TOP);
    let tmax = r
        .steps
        .iter()
        .map(|s| s.throughput.max(s.goodput.unwrap_or(0.0)))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let yt = Scale::new(0.0, tmax, false, H - BOTTOM, TOP);

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="20" font-size="13" font-weight="bold">{}</text>"#,
        LEFT,
        esc(&title(r))
    );
    // Grid and left axis (latency).
    for t in log_ticks(lmin, lmax) {
        let py = y.at(t);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        o,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">latency, ms (log)</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    // Right axis (throughput).
    for i in 0..=4 {
        let v = tmax * i as f64 / 4.0;
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{:.1}" fill="#ff7f0e">{}</text>"##,
            W - RIGHT + 6.0,
            yt.at(v) + 4.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        o,
        r##"<text transform="translate({},{:.1}) rotate(90)" text-anchor="middle" fill="#ff7f0e">ok/s</text>"##,
        W - 14.0,
        (TOP + H - BOTTOM) / 2.0
    );
    // X axis.
    for s in &r.steps {
        let px = x.at(s.x);
        let _ = writeln!(
            o,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            fmt_num(s.x)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0,
        match r.mode {
            Mode::Closed => "concurrency (clients)",
            Mode::Open => "offered rate (requests/s)",
        }
    );
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        W - RIGHT - LEFT,
        H - BOTTOM - TOP
    );
    // Series.
    let line = |name: &str, color: &str, pts: Vec<(f64, f64)>, dashed: bool, o: &mut String| {
        if pts.is_empty() {
            return;
        }
        let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        let dash = if dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}><title>{}</title></polyline>"#,
            d.join(" "),
            esc(name)
        );
        for (a, b) in &pts {
            let _ = writeln!(
                o,
                r#"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="{color}"/>"#
            );
        }
    };
    for (name, color, vals, dashed) in &series {
        let pts = r
            .steps
            .iter()
            .zip(vals)
            .filter_map(|(s, v)| v.map(|v| (x.at(s.x), y.at(v))))
            .collect();
        line(name, color, pts, *dashed, &mut o);
    }
    let tp = r
        .steps
        .iter()
        .map(|s| (x.at(s.x), yt.at(s.throughput)))
        .collect();
    line("ok/s", "#ff7f0e", tp, false, &mut o);
    let gp: Vec<(f64, f64)> = r
        .steps
        .iter()
        .filter_map(|s| s.goodput.map(|g| (x.at(s.x), yt.at(g))))
        .collect();
    let has_goodput = !gp.is_empty();
    line("goodput/s", "#8c564b", gp, true, &mut o);
    // Legend.
    let mut lx = LEFT;
    let mut legend: Vec<(&str, &str)> = series.iter().map(|(n, c, _, _)| (*n, *c)).collect();
    legend.push(("ok/s", "#ff7f0e"));
    if has_goodput {
        legend.push(("goodput/s", "#8c564b"));
    }
    for (name, color) in legend {
        let _ = writeln!(
            o,
            r#"<rect x="{lx}" y="32" width="12" height="4" fill="{color}"/><text x="{}" y="37">{}</text>"#,
            lx + 16.0,
            esc(name)
        );
        lx += 24.0 + 7.0 * name.len() as f64 + 12.0;
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::LatencySummary;
    use crate::result::{Machine, StepResult};
    use crate::scenario::E2e;

    fn result() -> ScenarioResult {
        ScenarioResult {
            name: "echo<&>".into(),
            description: "d".into(),
            command: "c".into(),
            commit: "x".into(),
            machine: Machine::default(),
            started_at: "t".into(),
            target: "t".into(),
            mode: Mode::Closed,
            e2e: E2e::None,
            warmup_s: 1.0,
            duration_s: 1.0,
            steps: [1.0, 10.0, 100.0]
                .iter()
                .map(|&x| StepResult {
                    x,
                    throughput: 100.0 * x,
                    submit: Some(LatencySummary {
                        p50: x,
                        p90: 2.0 * x,
                        p99: 3.0 * x,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn the_chart_has_a_line_per_series_and_escapes_text() {
        let svg = plot(&result());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4, "p50, p90, p99, ok/s");
        assert!(svg.contains("echo&lt;&amp;&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let mut with_goodput = result();
        for s in &mut with_goodput.steps {
            s.goodput = Some(s.throughput / 2.0);
        }
        let svg = plot(&with_goodput);
        assert_eq!(svg.matches("<polyline").count(), 5, "and goodput");
        assert!(svg.contains("goodput/s"));
    }

    #[test]
    fn scales_map_ends_to_pixels() {
        let s = Scale::new(1.0, 100.0, true, 0.0, 200.0);
        assert!((s.at(1.0) - 0.0).abs() < 1e-9);
        assert!((s.at(10.0) - 100.0).abs() < 1e-9);
        assert!((s.at(100.0) - 200.0).abs() < 1e-9);
        assert!((s.at(1e6) - 200.0).abs() < 1e-9, "clamped");
        assert_eq!(
            log_ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(fmt_num(2500.0), "2.5k");
    }

    #[test]
    fn a_single_step_still_draws() {
        let mut r = result();
        r.steps.truncate(1);
        let svg = plot(&r);
        assert!(svg.contains("<circle"));
        assert!(!svg.contains("NaN"));
    }
}
