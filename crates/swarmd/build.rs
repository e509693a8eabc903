//! Marks the tests whose outside needs this machine lacks (see
//! `../swarm-agents/test_env.rs`), so they are reported as ignored rather
//! than passed.

#[path = "../swarm-agents/test_env.rs"]
mod test_env;

use test_env::Need;

fn main() {
    test_env::report(&[
        Need::Postgres,
        Need::Python3,
        Need::Aiosmtpd,
        Need::Chromium,
        Need::Promtool,
        Need::PgServer,
        Need::Root,
    ]);
}
