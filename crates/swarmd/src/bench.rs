//! `swarmd bench` and `swarmd bench-report`: flags and scenario files onto
//! the `swarm-bench` instrument.

use swarm_bench::scenario::{Database, E2e, Launch, MixEntry, Mode, RawRequest, parse_steps};
use swarm_bench::{RunOptions, Scenario, read_result, report, write_outputs};

use crate::cli::{BenchArgs, BenchReportArgs, DatabaseArg, E2eArg, LaunchArg};

fn duration(flag: &str, v: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(v)
        .map_err(|e| format!("--{flag} `{v}` is not a duration like 2s or 500ms: {e}"))
}

/// The scenario the flags describe: the file's, with flags on top.
pub(crate) fn scenario(a: &BenchArgs) -> Result<Scenario, String> {
    let mut s = match &a.scenario {
        Some(p) => Scenario::from_file(p).map_err(|e| e.to_string())?,
        None => Scenario::from_toml(
            "name = \"bench\"\n[target]\nurl = \"http://127.0.0.1:8080\"\n[[request.mix]]\ntype = \"echo\"\n",
        )?,
    };
    if let Some(n) = &a.name {
        s.name = n.clone();
    }
    if let Some(u) = &a.server {
        s.target.url = Some(u.clone());
        if a.launch.is_none() {
            s.target.launch = Launch::None;
        }
    }
    if let Some(k) = &a.api_key {
        s.target.api_key = Some(k.clone());
    }
    if let Some(l) = a.launch {
        s.target.launch = match l {
            LaunchArg::None => Launch::None,
            LaunchArg::Swarmd => Launch::Swarmd,
            LaunchArg::Hello => Launch::Hello,
            LaunchArg::SimBackend => Launch::SimBackend,
        };
    }
    if let Some(c) = &a.config {
        s.target.config = Some(std::path::absolute(c).map_err(|e| format!("--config: {e}"))?);
    }
    if let Some(d) = a.database {
        s.target.database = match d {
            DatabaseArg::Sqlite => Database::Sqlite,
            DatabaseArg::Postgres => Database::Postgres,
        };
    }
    if let Some(c) = &a.concurrency {
        s.load.mode = Mode::Closed;
        s.load.steps = parse_steps(c).map_err(|e| format!("--concurrency: {e}"))?;
    }
    if let Some(r) = &a.rate {
        s.load.mode = Mode::Open;
        s.load.steps = parse_steps(r).map_err(|e| format!("--rate: {e}"))?;
    }
    if let Some(w) = &a.warmup {
        s.load.warmup = duration("warmup", w)?;
    }
    if let Some(d) = &a.duration {
        s.load.duration = duration("duration", d)?;
    }
    if let Some(n) = a.requests {
        s.load.requests = Some(n);
        // A request count with no explicit duration means "until done".
        if a.duration.is_none() && a.scenario.is_none() {
            s.load.duration = std::time::Duration::from_secs(3600);
        }
    }
    if let Some(m) = a.max_inflight {
        s.load.max_inflight = m;
    }
    if let Some(seed) = a.seed {
        s.load.seed = seed;
    }
    let template_flags = a.task_type.is_some()
        || a.args.is_some()
        || a.priority.is_some()
        || a.tenant.is_some()
        || a.timeout_ms.is_some()
        || a.agent.is_some();
    if template_flags {
        if s.request.mix.len() != 1 {
            s.request.mix = vec![MixEntry {
                weight: 1,
                task_type: "echo".into(),
                args: None,
                priority: None,
                tenant: None,
                timeout_ms: None,
                agent: None,
            }];
        }
        let m = &mut s.request.mix[0];
        if let Some(t) = &a.task_type {
            m.task_type = t.clone();
        }
        if let Some(j) = &a.args {
            m.args = Some(serde_json::from_str(j).map_err(|e| format!("--args is not JSON: {e}"))?);
        }
        if a.priority.is_some() {
            m.priority = a.priority.clone();
        }
        if a.tenant.is_some() {
            m.tenant = a.tenant.clone();
        }
        if a.timeout_ms.is_some() {
            m.timeout_ms = a.timeout_ms;
        }
        if a.agent.is_some() {
            m.agent = a.agent.clone();
        }
    }
    if let Some(w) = a.wait_ms {
        s.request.wait_ms = w;
        if a.e2e.is_none() {
            s.request.e2e = E2e::Wait;
        }
    }
    if let Some(e) = a.e2e {
        s.request.e2e = match e {
            E2eArg::None => E2e::None,
            E2eArg::Wait => E2e::Wait,
            E2eArg::Poll => E2e::Poll,
            E2eArg::Sse => E2e::Sse,
        };
    }
    if a.raw {
        s.request.mix.clear();
        s.request.e2e = E2e::None;
        let mut raw = s.request.raw.take().unwrap_or(RawRequest {
            method: "GET".into(),
            path: "/".into(),
            body: None,
            headers: Default::default(),
        });
        if let Some(m) = &a.method {
            raw.method = m.to_ascii_uppercase();
        }
        if let Some(p) = &a.path {
            raw.path = p.clone();
        }
        if let Some(b) = &a.body {
            raw.body =
                Some(serde_json::from_str(b).map_err(|e| format!("--body is not JSON: {e}"))?);
        }
        s.request.raw = Some(raw);
    }
    s.validate()
        .map_err(|e| format!("invalid bench settings: {e}"))?;
    Ok(s)
}

pub(crate) async fn run(a: BenchArgs) -> Result<(), String> {
    let s = scenario(&a)?;
    let command = std::iter::once("swarmd".to_string())
        .chain(std::env::args().skip(1))
        .map(|w| {
            if w.contains([' ', '{', '"']) {
                format!("'{w}'")
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let opts = RunOptions {
        quiet: a.quiet,
        command,
    };
    let result = swarm_bench::run(&s, &opts)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(dir) = &a.out {
        let files = write_outputs(&result, dir).map_err(|e| e.to_string())?;
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        println!("{}", report::markdown(&result, None));
    }
    Ok(())
}

pub(crate) fn report(a: BenchReportArgs) -> Result<(), String> {
    let ceiling = match &a.ceiling {
        Some(p) => Some(read_result(p).map_err(|e| e.to_string())?),
        None => None,
    };
    for p in &a.results {
        let r = read_result(p).map_err(|e| e.to_string())?;
        let is_ceiling = ceiling.as_ref().is_some_and(|c| c.name == r.name);
        println!(
            "{}",
            report::markdown(&r, if is_ceiling { None } else { ceiling.as_ref() })
        );
        if let Some(dir) = &a.charts {
            println!(
                "![{} chart]({}/{}.svg)\n",
                r.name,
                dir.trim_end_matches('/'),
                r.name
            );
        }
    }
    Ok(())
}
