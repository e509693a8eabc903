//! `swarmd top`: `swarmd status`, redrawn every `--interval`, with per-pool
//! rates from the difference between polls.
//!
//! Plain ANSI escapes, no TUI crate: on a terminal each frame moves the
//! cursor home and overwrites the last one (erasing line ends and the rest
//! of the screen, which flickers less than clearing first), with the cursor
//! hidden until the end. Piped, frames are printed one after another with no
//! escapes, so the output stays readable in a file or a test.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use crate::cli::TopArgs;
use crate::client::{STATUS_TIMEOUT, fetch_status, http_client, pool_rates, render_status};

/// Shows the cursor again however `top` ends (Ctrl-C, an error, the last
/// iteration).
struct Terminal {
    tty: bool,
}

impl Terminal {
    fn open(tty: bool) -> Self {
        if tty {
            // Hide the cursor, clear once.
            print!("\x1b[?25l\x1b[2J");
        }
        Self { tty }
    }

    fn frame(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let mut buf = String::with_capacity(text.len() + 256);
            buf.push_str("\x1b[H");
            for line in text.lines() {
                buf.push_str(line);
                buf.push_str("\x1b[K\n");
            }
            buf.push_str("\x1b[J");
            let _ = out.write_all(buf.as_bytes());
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.tty {
            print!("\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
    }
}

pub(crate) async fn run(a: TopArgs) -> Result<(), String> {
    let interval = humantime::parse_duration(&a.interval)
        .map_err(|e| format!("--interval `{}`: {e}", a.interval))?;
    if interval < Duration::from_millis(50) {
        return Err("--interval must be at least 50ms".into());
    }
    if a.iterations == Some(0) {
        return Err("--iterations must be at least 1".into());
    }
    let client = http_client(&a.client, STATUS_TIMEOUT)?;
    let term = Terminal::open(std::io::stdout().is_terminal());
    let polls = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prev: Option<Value> = None;
        let mut shown = 0u64;
        loop {
            ticker.tick().await;
            let header = format!(
                "swarmd top · {} every {} · Ctrl-C quits\n",
                a.client.server,
                humantime::format_duration(interval)
            );
            let body = match fetch_status(&client, &a.client).await {
                Ok(s) => {
                    let rates = prev.as_ref().map(|p| pool_rates(p, &s)).unwrap_or_default();
                    let text = render_status(&s, Some(&rates));
                    prev = Some(s);
                    text
                }
                // A wrong address or key is reported at once; a server that
                // goes away later (a restart) is waited for.
                Err(e) if prev.is_none() => return Err(e),
                Err(e) => format!("{e}\nretrying…\n"),
            };
            term.frame(&format!("{header}{body}"));
            shown += 1;
            if a.iterations.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
    };
    // Ctrl-C ends the loop wherever it is; `term` then restores the cursor.
    tokio::select! {
        r = polls => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
