//! The store's errors, and which database failures are the database's
//! weather rather than the caller's fault.
//!
//! A failure is *transient* when the same statement may well succeed on a
//! fresh connection a moment later: the server went away or is restarting
//! (SQLSTATE class `08`, `57P01`–`57P03`), it is out of connection slots
//! (`53300`), a statement or lock timeout fired (`57014`, `55P03`), a
//! serialisation conflict (`40001`, `40P01`), or on SQLite a busy, locked,
//! read-only, full or unreadable file. Those become
//! [`StoreError::Unavailable`]: callers answer `503` and retry, and the
//! writer retries them itself first. Anything else (a constraint, a bad
//! value) is [`StoreError::Database`] and is never retried blindly.

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The configuration cannot work (bad URL).
    #[error("{0}")]
    Config(String),
    /// Connecting or migrating failed at start.
    #[error("{0}")]
    Connect(String),
    /// The database is busy or unreachable now (pool timeout, refused or
    /// broken connection, server restarting); nothing was written. Callers
    /// answer 503 and retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The connection broke while the commit was in flight: the write may or
    /// may not be stored. Every write is idempotent, so repeating it is
    /// safe; a caller that cannot repeat it must find out from the store.
    #[error("database unavailable (outcome unknown): {0}")]
    InDoubt(String),
    /// A query failed for a reason a retry will not fix.
    #[error("database error: {0}")]
    Database(String),
    /// A stored row cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Whether the database itself is the problem (retry later), as
    /// opposed to the request or the data.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::InDoubt(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolClosed) {
            StoreError::Closed
        } else if is_transient(&e) {
            StoreError::Unavailable(describe(&e))
        } else {
            StoreError::Database(describe(&e))
        }
    }
}

/// Whether `e` is the database's weather (see the module docs).
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            db.code().is_some_and(|c| transient_code(&c, sqlite))
        }
        _ => false,
    }
}

fn transient_code(code: &str, sqlite: bool) -> bool {
    if sqlite {
        // SQLite reports its extended result code as a decimal number; the
        // primary code is its low byte.
        return code.parse::<i64>().is_ok_and(|n| {
            matches!(
                n & 0xff,
                5 /* BUSY */ | 6 /* LOCKED */ | 8 /* READONLY */ | 10 /* IOERR */
                    | 13 /* FULL */ | 14 /* CANTOPEN */ | 15 /* PROTOCOL */
            )
        });
    }
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "53400" | "57014" | "55P03" | "40001" | "40P01"
        )
}

/// A one-line description: the driver's message without PostgreSQL's
/// source line (`… at line 948`), with the SQLSTATE when there is one.
pub(crate) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_string(),
        },
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::ConnectionReset => "connection reset by the server".to_string(),
            std::io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
            _ => format!("connection error: {io}"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_and_sqlite_codes_sort_into_transient_and_not() {
        for c in [
            "08006", "08001", "57P01", "57P03", "53300", "57014", "55P03", "40001",
        ] {
            assert!(transient_code(c, false), "{c}");
        }
        for c in ["23505", "22021", "42P01", "22P02", "00005"] {
            assert!(!transient_code(c, false), "{c}");
        }
        // SQLITE_BUSY, SQLITE_READONLY_DIRECTORY (1544), SQLITE_IOERR_WRITE (778).
        for c in ["5", "1544", "778", "13"] {
            assert!(transient_code(c, true), "{c}");
        }
        // SQLITE_CONSTRAINT_UNIQUE (2067), SQLITE_TOOBIG (18).
        for c in ["2067", "18"] {
            assert!(!transient_code(c, true), "{c}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert_eq!(
            describe(&sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            ))),
            "connection refused"
        );
    }
}
