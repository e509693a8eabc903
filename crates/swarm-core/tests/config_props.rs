//! Properties of the configuration parser (`Config::from_toml` and
//! `Config::validate`, TOML → `Config`): any text gets an answer, never a
//! panic, and a valid configuration reads back as the values it was
//! written from.

use proptest::prelude::*;
use swarm_core::config::{Config, Role};

const KINDS: &[&str] = &["communications", "reviewers", "email", "sim", "echo"];

fn check(text: &str) {
    if let Ok(cfg) = Config::from_toml(text) {
        let _ = cfg.validate(KINDS);
    }
}

/// A TOML value of any type, often out of range.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "18446744073709551615",
            "1e400",
            "nan",
            "inf"
        ])
        .prop_map(String::from),
        any::<f64>().prop_map(|f| format!("{f:?}").replace("NaN", "nan")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z_ ]{0,10}".prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("{}".to_string()),
    ]
}

/// Section and key names the parser knows, and some it does not.
fn section() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "server",
        "database",
        "admission",
        "director",
        "monitor",
        "cpu_pool",
        "pools.echo",
        "pools.fast",
        "pools.sim.queue",
        "pools.sim.limit",
        "pools.x.balance",
        "nonsense",
    ])
    .prop_map(String::from)
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "listen",
        "max_body_bytes",
        "max_wait_ms",
        "url",
        "max_connections",
        "agent",
        "concurrency",
        "replicas",
        "default_timeout_ms",
        "max_timeout_ms",
        "capacity",
        "target_delay_ms",
        "algorithm",
        "policy",
        "default_department",
        "tenant_max_outstanding",
        "global_max_inflight",
        "threads",
        "metrics",
        "typo",
    ])
    .prop_map(String::from)
}

fn structured_but_wrong() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (section(), prop::collection::vec((key(), value()), 0..5)),
        0..5,
    )
    .prop_map(|sections| {
        let mut text = String::new();
        for (name, entries) in sections {
            text.push_str(&format!("[{name}]\n"));
            for (k, v) in entries {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        text
    })
}

/// A pool: name, agent kind, concurrency, replicas, default and maximum
/// timeout.
type Pool = (String, &'static str, Option<usize>, usize, u64, u64);

/// A valid configuration as the values it should read back as.
#[derive(Debug, Clone)]
struct Valid {
    max_body_bytes: usize,
    max_wait_ms: u64,
    pools: Vec<Pool>,
    tenants: Vec<(String, Role, String, u32)>,
}

impl Valid {
    fn toml(&self) -> String {
        let mut t = format!(
            "[server]\nmax_body_bytes = {}\nmax_wait_ms = {}\n",
            self.max_body_bytes, self.max_wait_ms
        );
        for (name, agent, concurrency, replicas, default_ms, max_ms) in &self.pools {
            t.push_str(&format!(
                "[pools.{name}]\nagent = \"{agent}\"\nreplicas = {replicas}\n\
                 default_timeout_ms = {default_ms}\nmax_timeout_ms = {max_ms}\n"
            ));
            if let Some(c) = concurrency {
                t.push_str(&format!("concurrency = {c}\n"));
            }
        }
        for (name, role, key, weight) in &self.tenants {
            let role = match role {
                Role::Admin => "admin",
                Role::Client => "client",
            };
            t.push_str(&format!(
                "[[tenants]]\nname = \"{name}\"\nrole = \"{role}\"\nkey_sha256 = \"{key}\"\nweight = {weight}\n"
            ));
        }
        t
    }
}

prop_compose! {
    fn valid()(
        max_body_bytes in 1024usize..(64 << 20),
        max_wait_ms in 1u64..600_000,
        pools in prop::collection::btree_map(
            "p[a-z0-9]{0,8}",
            (
                prop::sample::select(KINDS),
                prop::option::of(1usize..1000),
                1usize..8,
                (1u64..600_000).prop_flat_map(|d| (Just(d), d..3_600_000)),
            ),
            0..4,
        ),
        tenants in prop::collection::btree_map(
            "t[a-z0-9_-]{0,10}",
            (
                prop::sample::select(vec![Role::Client, Role::Admin]),
                "[0-9a-f]{64}",
                1u32..100,
            ),
            0..4,
        ),
    ) -> Valid {
        Valid {
            max_body_bytes,
            max_wait_ms,
            pools: pools
                .into_iter()
                .map(|(n, (a, c, r, (d, m)))| (n, a, c, r, d, m))
                .collect(),
            tenants: tenants.into_iter().map(|(n, (r, k, w))| (n, r, k, w)).collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_gets_an_answer(text in "\\PC{0,200}") {
        check(&text);
    }

    #[test]
    fn any_bytes_as_text_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn wrong_types_and_ranges_get_an_answer(text in structured_but_wrong()) {
        check(&text);
    }

    #[test]
    fn a_valid_config_round_trips(v in valid()) {
        let text = v.toml();
        let cfg = Config::from_toml(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        cfg.validate(KINDS).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(cfg.server.max_body_bytes, v.max_body_bytes);
        prop_assert_eq!(cfg.server.max_wait_ms, v.max_wait_ms);
        for (name, agent, concurrency, replicas, default_ms, max_ms) in &v.pools {
            let p = &cfg.pools[name];
            prop_assert_eq!(p.agent.as_deref(), Some(*agent));
            prop_assert_eq!(p.concurrency, *concurrency);
            prop_assert_eq!(p.replicas, Some(*replicas));
            prop_assert_eq!(p.default_timeout_ms, Some(*default_ms));
            prop_assert_eq!(p.max_timeout_ms, Some(*max_ms));
        }
        prop_assert_eq!(cfg.tenants.len(), v.tenants.len());
        for (t, (name, role, key, weight)) in cfg.tenants.iter().zip(&v.tenants) {
            prop_assert_eq!(&t.name, name);
            prop_assert_eq!(t.role, *role);
            prop_assert_eq!(&t.key_sha256, key);
            prop_assert_eq!(t.weight, *weight);
        }
    }
}
