//! Marks the tests whose outside needs this machine lacks (see
//! `test_env.rs`), so they are reported as ignored rather than passed.

mod test_env;

fn main() {
    test_env::report(&[test_env::Need::Python3, test_env::Need::Aiosmtpd]);
}
