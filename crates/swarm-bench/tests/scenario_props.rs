//! Properties of the scenario parser (`Scenario::from_toml`, TOML →
//! `Scenario`, checked): any text gets an answer, never a panic, and a valid
//! scenario written out as TOML reads back equal.

use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;
use swarm_bench::scenario::{
    Database, E2e, Launch, LoadSpec, MixEntry, Mode, Phase, RequestSpec, Scenario, TargetSpec,
};

/// TOML has no null, so generated agent input holds none.
fn args() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        prop::collection::btree_map(
            "[a-z]{1,6}",
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::from),
                (-1e9f64..1e9).prop_map(Value::from),
            ],
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
    )
}

fn ms() -> impl Strategy<Value = Duration> {
    (1u64..100_000_000).prop_map(Duration::from_millis)
}

fn label() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[a-z][a-z0-9 ]{0,10}")
}

fn target() -> impl Strategy<Value = TargetSpec> {
    (
        prop::sample::select(vec![
            Launch::None,
            Launch::Swarmd,
            Launch::Hello,
            Launch::SimBackend,
        ]),
        prop::option::of("http://[a-z]{1,8}:[0-9]{2,5}"),
        prop::option::of("[a-z]{1,8}\\.toml"),
        prop::sample::select(vec![Database::Sqlite, Database::Postgres]),
        prop::option::of("[!-~]{1,20}"),
        prop::option::of(1u64..100_000),
        prop::option::of("[a-z]{1,8}"),
    )
        .prop_map(
            |(launch, url, config, database, api_key, sample_ms, pool)| TargetSpec {
                url: if launch == Launch::None {
                    Some(url.unwrap_or_else(|| "http://127.0.0.1:8080".into()))
                } else {
                    url
                },
                config: config
                    .filter(|_| matches!(launch, Launch::Swarmd | Launch::SimBackend))
                    .map(PathBuf::from),
                launch,
                database,
                api_key,
                sample_ms,
                pool,
            },
        )
}

fn load() -> impl Strategy<Value = LoadSpec> {
    let closed = (
        prop::collection::vec((1u32..10_000).prop_map(f64::from), 1..4),
        Just(Vec::new()),
    )
        .prop_map(|(s, p)| (Mode::Closed, s, p));
    let phase =
        (0.01f64..10.0, ms(), args(), label()).prop_map(|(factor, duration, args, label)| Phase {
            factor,
            duration,
            args,
            label,
        });
    let open = (
        prop::collection::vec(0.001f64..10_000.0, 1..4),
        prop::collection::vec(phase, 0..3),
    )
        .prop_map(|(s, p)| (Mode::Open, s, p));
    (
        prop_oneof![closed, open],
        ms(),
        ms(),
        prop::option::of(1u64..1_000_000),
        1usize..1_000_000,
        0u64..(i64::MAX as u64),
    )
        .prop_map(
            |((mode, steps, phases), warmup, duration, requests, max_inflight, seed)| LoadSpec {
                mode,
                steps,
                warmup,
                duration,
                requests,
                max_inflight,
                seed,
                phases,
            },
        )
}

fn request() -> impl Strategy<Value = RequestSpec> {
    let entry = (
        1u32..100,
        "[a-z]{1,10}",
        args(),
        prop::option::of(
            prop::sample::select(vec!["low", "normal", "high"]).prop_map(String::from),
        ),
        prop::option::of("[a-z]{1,8}"),
        prop::option::of(1u64..1_000_000),
        prop::option::of("[a-z]{1,8}"),
        label(),
    );
    (
        prop::sample::select(vec![E2e::None, E2e::Wait, E2e::Poll, E2e::Sse]),
        0u64..100_000,
        1u64..10_000,
        prop::collection::vec(entry, 1..4),
    )
        .prop_map(|(e2e, wait_ms, poll_ms, entries)| {
            let labels: Vec<Option<String>> = entries.iter().map(|e| e.7.clone()).collect();
            RequestSpec {
                e2e,
                wait_ms,
                poll_ms,
                mix: entries
                    .into_iter()
                    .map(
                        |(weight, task_type, args, priority, tenant, timeout_ms, agent, _)| {
                            MixEntry {
                                weight,
                                task_type,
                                args,
                                priority,
                                tenant,
                                timeout_ms,
                                agent,
                            }
                        },
                    )
                    .collect(),
                raw: None,
                // As the parser keeps them: none at all when no entry has one.
                labels: if labels.iter().all(Option::is_none) {
                    Vec::new()
                } else {
                    labels
                },
            }
        })
}

prop_compose! {
    fn scenario()(
        name in "[A-Za-z0-9_.-]{1,20}",
        description in "\\PC{0,40}",
        target in target(),
        load in load(),
        request in request(),
    ) -> Scenario {
        Scenario { name, description, target, load, request, base_dir: PathBuf::new() }
    }
}

/// Keys a scenario file has, so generated tables often hit them.
fn structured_but_wrong() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "name",
        "description",
        "launch",
        "url",
        "mode",
        "steps",
        "warmup",
        "duration",
        "requests",
        "max_inflight",
        "phases",
        "e2e",
        "wait_ms",
        "mix",
        "raw",
        "weight",
        "type",
        "factor",
        "label",
        "typo",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("-1.5".to_string()),
        Just("0".to_string()),
        "[a-z0-9 ]{0,8}".prop_map(|s| format!("{s:?}")),
        Just("\"2s\"".to_string()),
        Just("[1, 2]".to_string()),
        Just("[{ type = \"echo\" }]".to_string()),
        Just("{}".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
    ];
    let section = prop::sample::select(vec![
        "",
        "[target]",
        "[load]",
        "[request]",
        "[[request.mix]]",
        "[[load.phases]]",
        "[request.raw]",
    ]);
    prop::collection::vec((section, prop::collection::vec((key, value), 0..5)), 0..5).prop_map(
        |parts| {
            let mut text = String::from("name = \"x\"\n");
            for (section, entries) in parts {
                text.push_str(section);
                text.push('\n');
                for (k, v) in entries {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
            text
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_gets_an_answer(text in "\\PC{0,200}") {
        let _ = Scenario::from_toml(&text);
    }

    #[test]
    fn wrong_types_and_ranges_get_an_answer(text in structured_but_wrong()) {
        let _ = Scenario::from_toml(&text);
    }

    #[test]
    fn a_valid_scenario_round_trips(s in scenario()) {
        s.validate().map_err(|e| TestCaseError::fail(format!("generated an invalid scenario: {e}")))?;
        let text = toml::to_string(&s).unwrap();
        let back = Scenario::from_toml(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, s, "{}", text);
    }
}
