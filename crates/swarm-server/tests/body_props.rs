//! Properties of the request-body parser (`extract::parse_json`, JSON →
//! `TaskSpec` with field-level errors): any input gets an answer, never a
//! panic, and a valid body reads back as the value it was written from.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use swarm_core::{Priority, TaskSpec};
use swarm_server::extract::parse_json;

/// The fields of a `TaskSpec`, so generated objects often hit them.
const FIELDS: &[&str] = &[
    "type",
    "args",
    "title",
    "description",
    "priority",
    "agent",
    "timeout_ms",
    "wait_ms",
    "idempotency_key",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "echo", "normal", "HIGH", "medium", "urgent", "", "\u{0}"
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS).prop_map(String::from),
                        ".{0,8}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn priority() -> impl Strategy<Value = Priority> {
    prop::sample::select(Priority::ALL.to_vec())
}

fn text() -> impl Strategy<Value = Option<String>> {
    prop::option::of("\\PC{0,40}")
}

fn args() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        prop::collection::btree_map("[a-z]{1,6}", leaf(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    )
}

prop_compose! {
    fn spec()(
        task_type in "[A-Za-z0-9_.-]{1,64}",
        args in args(),
        title in text(),
        description in text(),
        priority in prop::option::of(priority()),
        agent in text(),
        timeout_ms in prop::option::of(any::<u64>()),
        wait_ms in prop::option::of(any::<u64>()),
        idempotency_key in text(),
        delay_ms in prop::option::of(any::<u64>()),
        retry in prop::option::of((
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
        )),
    ) -> TaskSpec {
        TaskSpec {
            task_type,
            args,
            title,
            description,
            priority,
            agent,
            timeout_ms,
            wait_ms,
            idempotency_key,
            retry: retry.map(|(max_attempts, backoff_ms, max_backoff_ms)| swarm_core::RetrySpec {
                max_attempts,
                backoff_ms,
                max_backoff_ms,
            }),
            run_at: None,
            delay_ms,
            callback_url: None,
        }
    }
}

fn check_error(e: &swarm_server::ApiError) {
    let status = e.status.as_u16();
    assert!(status == 400 || status == 422, "{status}: {e:?}");
    assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
    if status == 400 {
        assert_eq!(e.code, "malformed_json", "{e:?}");
        assert_eq!(e.field, None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = parse_json::<TaskSpec>(&bytes) {
            check_error(&e);
        }
    }

    #[test]
    fn any_json_gets_an_answer(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        match parse_json::<TaskSpec>(&bytes) {
            Ok(spec) => prop_assert!(v.is_object(), "{v} parsed as {spec:?}"),
            // Well-formed JSON of the wrong shape is never a syntax error.
            Err(e) => {
                check_error(&e);
                prop_assert_eq!(e.status.as_u16(), 422, "{}: {:?}", v, e);
            }
        }
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named(field in prop::sample::select(FIELDS), v in json_value()) {
        let mut body = json!({"type": "echo"});
        body[field] = v.clone();
        if let Err(e) = parse_json::<TaskSpec>(&serde_json::to_vec(&body).unwrap()) {
            check_error(&e);
            prop_assert_eq!(e.field.as_deref().map(|f| f.split(['.', '[']).next().unwrap()), Some(field), "{}", body);
        }
    }

    #[test]
    fn a_valid_spec_round_trips(spec in spec()) {
        let bytes = serde_json::to_vec(&spec).unwrap();
        let back: TaskSpec = parse_json(&bytes).unwrap();
        prop_assert_eq!(back, spec);
    }

    #[test]
    fn integral_floats_read_as_whole_numbers(ms in 0u64..(1 << 53)) {
        let body = format!(r#"{{"type":"echo","timeout_ms":{ms}.0,"wait_ms":{ms}e0}}"#);
        let spec: TaskSpec = parse_json(body.as_bytes()).unwrap();
        prop_assert_eq!((spec.timeout_ms, spec.wait_ms), (Some(ms), Some(ms)));
    }
}
