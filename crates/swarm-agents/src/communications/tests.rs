//! Tests of the whole workflow: the steps together, and the agent end to end.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::test_support::opts;
use super::*;
use crate::agent::Progress;
use crate::email::{MAX_SUBJECT_CHARS, OutboxMessage};
use crate::test_support::{RecordingOutbox, ctx, input};

// --- steps together ------------------------------------------------------

#[test]
fn no_input_makes_the_pipeline_panic() {
    // Random text over an alphabet of the characters the rules look at,
    // plus multi-byte letters, spaces and punctuation.
    const PIECES: &[&str] = &[
        "hi",
        "Hey",
        "dear",
        "thanks",
        "Best",
        "regards",
        "db",
        "1h",
        "30m",
        "1.5h",
        "approx.",
        "e.g.",
        "i'm",
        "URGENT",
        "HTTPS",
        "u",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\u{3000}",
        "\u{a0}",
        ",",
        ".",
        "!",
        "?",
        "!!",
        "?!?",
        "…",
        "(",
        ")",
        "\"",
        "'",
        "é",
        "ß",
        "İ",
        "🎉",
        "a@b.c",
        "http://x.y/z",
        "`c`",
        "-",
        ":",
        ";",
        "x",
        "word",
        "Ana",
        "12",
        ".5",
        "1..2h",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..3000 {
        let len = rng.usize(0..40);
        let text: String = (0..len)
            .map(|_| PIECES[rng.usize(..PIECES.len())])
            .collect();
        let long = if round % 100 == 0 {
            text.repeat(200)
        } else {
            text.clone()
        };
        for body in [&text, &long] {
            let a = CommsArgs {
                to: vec!["a@b.com".into()],
                cc: vec![],
                subject: text.lines().next().unwrap_or("").to_string(),
                body: body.clone(),
                recipient_name: None,
                sender_name: None,
                tone: if round % 2 == 0 {
                    Tone::Formal
                } else {
                    Tone::Friendly
                },
                allow_truncate: round % 3 == 0,
            };
            let d = Draft::from_args(&a);
            let reviews = [review_tone(&d, a.tone), review_structure(&d, &opts(a.tone))];
            let m = merge(&d, &reviews, a.allow_truncate);
            let _ = m.draft.compose_body();
            let _ = summary_subject(Some("P"), body);
            let _ = truncate_body(body);
            let _ = first_sentence(body);
            assert!(
                m.draft.subject.chars().count() <= MAX_SUBJECT_CHARS.max(d.subject.chars().count())
            );
        }
    }
}

// --- end to end ----------------------------------------------------------

/// The agent around an email agent that stores into a recording outbox.
fn comms_agent() -> (Arc<CommunicationsAgent>, Arc<RecordingOutbox>) {
    let outbox = Arc::new(RecordingOutbox::default());
    let email = Arc::new(EmailAgent::new(None, outbox.clone()).unwrap());
    (Arc::new(CommunicationsAgent::new(email)), outbox)
}

#[tokio::test]
async fn end_to_end_through_the_outbox() {
    let (agent, outbox) = comms_agent();
    let steps = Arc::new(Mutex::new(Vec::new()));
    let mut ctx = ctx();
    let seen = steps.clone();
    ctx.progress = Progress::new(move |v| {
        seen.lock()
            .unwrap()
            .push(v["step"].as_str().unwrap_or("").to_string())
    });

    let out = agent
        .run(
            ctx,
            input(json!({"to": "ops@example.com", "cc": "lead@example.com", "subject": "Outage", "body": "db down, eta 1h"})),
        )
        .await
        .unwrap();

    let expected_body = "Hello,\n\nDatabase down, ETA 1 hour.\n\nBest regards,\nSwarmDirector";
    assert_eq!(out["final"]["subject"], "Outage: Database down, ETA 1 hour");
    assert_eq!(out["final"]["body"], expected_body);
    assert_eq!(out["draft"]["body"], "db down, eta 1h");
    assert_eq!(out["reviews"][0]["reviewer"], "tone");
    assert_eq!(out["reviews"][1]["reviewer"], "structure");
    assert_eq!(out["applied"].as_array().unwrap().len(), 4);
    assert_eq!(out["rejected"], json!([]));
    assert_eq!(out["delivery"]["transport"], "outbox");
    assert_eq!(
        *steps.lock().unwrap(),
        ["draft", "review", "merge", "final", "delivered"]
    );

    let stored: Vec<OutboxMessage> = outbox.messages.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].to, vec!["ops@example.com"]);
    assert_eq!(stored[0].cc, vec!["lead@example.com"]);
    assert_eq!(stored[0].subject, "Outage: Database down, ETA 1 hour");
    assert_eq!(stored[0].body, expected_body);
    assert_eq!(stored[0].tenant, "acme");
}

#[tokio::test]
async fn friendly_message_with_names_and_existing_parts() {
    let (agent, _) = comms_agent();
    let out = agent
        .run(
            ctx(),
            input(json!({"to": "ana@example.com", "message": "hey Ana!\nthe deploy is DONE!!\ncheers, Bo",
                "tone": "friendly", "subject": "Deploy of the billing service"})),
        )
        .await
        .unwrap();
    assert_eq!(out["final"]["subject"], "Deploy of the billing service");
    assert_eq!(
        out["final"]["body"],
        "Hey Ana!\n\nThe deploy is DONE!\n\ncheers, Bo"
    );
}

#[tokio::test]
async fn cancelled_before_start_sends_nothing() {
    let (agent, outbox) = comms_agent();
    let ctx = ctx();
    ctx.cancel.cancel();
    let err = agent
        .run(ctx, input(json!({"to": "a@b.com", "body": "db down"})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cancelled");
    assert!(outbox.messages.lock().unwrap().is_empty());
}

#[tokio::test]
async fn invalid_args_at_run_time_name_the_field() {
    let (agent, _) = comms_agent();
    let err = agent
        .run(ctx(), input(json!({"body": "x"})))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AgentError::Invalid {
            message: "`to` is required".into(),
            field: Some("to".into()),
        }
    );
}
