//! The director: picks the department (pool) for a task.
//!
//! Order, first match wins:
//! 1. an explicit `agent`: a pool name, or an agent kind (its first pool);
//! 2. `director.types`: a type mapped to a pool, or to `auto` (so `email`
//!    goes to `communications` although a pool named `email` exists, as in
//!    the prototype);
//! 3. a `type` that names a pool;
//! 4. for `auto` types, keyword rules over the title, description and the
//!    strings inside `args` (whole words, case-insensitive), else
//!    `director.default_department`.
//!
//! Routing happens before queueing, so each pool has its own queue and a slow
//! department never blocks a fast one.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;
use swarm_core::config::Config;
use swarm_core::{FieldError, TaskSpec};

/// How a route was chosen (for logs and the task's record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// `agent` named it.
    Explicit,
    /// `director.types` mapped the type.
    TypeMap,
    /// The type is the pool's name.
    TypeIsPool,
    /// A keyword rule matched.
    Keyword,
    /// Nothing matched; the default department.
    Default,
}

/// The routing table, built once from configuration.
#[derive(Debug, Clone)]
pub struct Director {
    /// Pool name → agent kind.
    pools: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    rules: Vec<(String, Vec<String>)>,
    default: String,
}

/// Strings longer than this inside `args` are not scanned for keywords, and
/// scanning stops after this many words: routing must stay cheap on any input.
const MAX_SCAN_WORDS: usize = 10_000;

impl Director {
    /// Builds the table from a validated configuration.
    pub fn new(cfg: &Config) -> Self {
        Self {
            pools: cfg
                .pools
                .iter()
                .map(|(n, p)| (n.clone(), p.agent_kind(n).to_string()))
                .collect(),
            types: cfg.director.types.clone(),
            rules: cfg
                .director
                .rules
                .iter()
                .map(|r| {
                    (
                        r.department.clone(),
                        r.keywords.iter().map(|k| k.to_lowercase()).collect(),
                    )
                })
                .collect(),
            default: cfg.director.default_department.clone(),
        }
    }

    /// Every type the director accepts: pool names and mapped types.
    pub fn known_types(&self) -> BTreeSet<&str> {
        self.pools
            .keys()
            .chain(self.types.keys())
            .map(String::as_str)
            .collect()
    }

    /// The department for `spec`, or a 422-worthy error naming the field.
    pub fn route(&self, spec: &TaskSpec) -> Result<(String, RouteReason), FieldError> {
        if let Some(agent) = &spec.agent {
            if self.pools.contains_key(agent) {
                return Ok((agent.clone(), RouteReason::Explicit));
            }
            if let Some((pool, _)) = self.pools.iter().find(|(_, kind)| *kind == agent) {
                return Ok((pool.clone(), RouteReason::Explicit));
            }
            return Err(FieldError {
                code: "unknown_agent",
                message: format!(
                    "unknown agent `{agent}`; known: {}",
                    self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                field: Some("agent".into()),
            });
        }
        let ty = spec.task_type.as_str();
        match self.types.get(ty).map(String::as_str) {
            Some("auto") => Ok(self.by_keywords(spec)),
            Some(pool) => Ok((pool.to_string(), RouteReason::TypeMap)),
            None if self.pools.contains_key(ty) => Ok((ty.to_string(), RouteReason::TypeIsPool)),
            None => Err(FieldError {
                code: "unknown_type",
                message: format!(
                    "unknown task type `{ty}`; known: {}",
                    self.known_types()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                field: Some("type".into()),
            }),
        }
    }

    fn by_keywords(&self, spec: &TaskSpec) -> (String, RouteReason) {
        let words = words_of(spec);
        for (pool, keywords) in &self.rules {
            if keywords.iter().any(|k| words.contains(k.as_str())) {
                return (pool.clone(), RouteReason::Keyword);
            }
        }
        (self.default.clone(), RouteReason::Default)
    }
}

/// Lower-cased words of the title, description and the strings in `args`.
fn words_of(spec: &TaskSpec) -> HashSet<String> {
    let mut words = HashSet::new();
    let push_words = |s: &str, words: &mut HashSet<String>| {
        for w in s
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            if words.len() >= MAX_SCAN_WORDS {
                return;
            }
            words.insert(w.to_lowercase());
        }
    };
    if let Some(t) = &spec.title {
        push_words(t, &mut words);
    }
    if let Some(d) = &spec.description {
        push_words(d, &mut words);
    }
    let mut stack: Vec<&Value> = spec.args.iter().collect();
    while let Some(v) = stack.pop() {
        if words.len() >= MAX_SCAN_WORDS {
            break;
        }
        match v {
            Value::String(s) => push_words(s, &mut words),
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> TaskSpec {
        serde_json::from_value(v).unwrap()
    }

    fn director() -> Director {
        let cfg = Config::from_toml(
            "[pools.fast]\nagent = \"sim\"\n\
             [[director.rules]]\ndepartment = \"communications\"\nkeywords = [\"email\"]\n\
             [[director.rules]]\ndepartment = \"sim\"\nkeywords = [\"Simulate\"]\n",
        )
        .unwrap();
        Director::new(&cfg)
    }

    #[test]
    fn explicit_agent_wins() {
        let d = director();
        let (p, r) = d
            .route(&spec(json!({"type": "email", "agent": "echo"})))
            .unwrap();
        assert_eq!((p.as_str(), r), ("echo", RouteReason::Explicit));
        // An agent kind resolves to its first pool by name.
        let (p, _) = d
            .route(&spec(json!({"type": "email", "agent": "fast"})))
            .unwrap();
        assert_eq!(p, "fast");
        let e = d
            .route(&spec(json!({"type": "echo", "agent": "nobody"})))
            .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_agent", Some("agent"))
        );
    }

    #[test]
    fn types_route_to_pools() {
        let d = director();
        assert_eq!(d.route(&spec(json!({"type": "sim"}))).unwrap().0, "sim");
        let (p, r) = d.route(&spec(json!({"type": "email"}))).unwrap();
        assert_eq!((p.as_str(), r), ("communications", RouteReason::TypeMap));
    }

    #[test]
    fn unknown_type_lists_known_ones() {
        let e = director()
            .route(&spec(json!({"type": "nope"})))
            .unwrap_err();
        assert_eq!(e.code, "unknown_type");
        assert_eq!(e.field.as_deref(), Some("type"));
        assert!(e.message.contains("communications") && e.message.contains("general"));
    }

    #[test]
    fn keywords_route_auto_types() {
        let d = director();
        let (p, r) = d
            .route(&spec(
                json!({"type": "general", "title": "Send the weekly EMAIL"}),
            ))
            .unwrap();
        assert_eq!((p.as_str(), r), ("communications", RouteReason::Keyword));
        let (p, _) = d
            .route(&spec(
                json!({"type": "task", "args": {"steps": [{"what": "simulate load"}]}}),
            ))
            .unwrap();
        assert_eq!(p, "sim");
        // Whole words only: "emailing" is not "email".
        let (p, r) = d
            .route(&spec(
                json!({"type": "general", "description": "emailing lists"}),
            ))
            .unwrap();
        assert_eq!((p.as_str(), r), ("echo", RouteReason::Default));
    }
}
