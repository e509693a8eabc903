//! Who is calling: API keys → tenant and role.
//!
//! With keys configured (`[[tenants]]`), every API call needs
//! `Authorization: Bearer <key>`. Only the key's SHA-256 is kept; a presented
//! key is hashed and compared with every configured hash in constant time
//! (no early exit), so timing reveals neither which key nearly matched nor
//! how many there are beyond their count. With no keys configured (the
//! embedded default), `X-Tenant` names the tenant, default `default`.
//!
//! The keys follow the engine's current roster ([`Engine::tenants`]): a
//! reload that removes a tenant takes its keys away at once, since
//! [`KeyRing`] rebuilds its table whenever the roster's generation moves.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use sha2::{Digest, Sha256};
use swarm_core::config::{Role, TenantConfig};
use swarm_engine::Engine;

use crate::error::ApiError;

/// The configured keys.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<([u8; 32], String, Role)>,
}

impl Keys {
    /// Reads `[[tenants]]` (validated: 64 hex digits each).
    pub fn from_config(tenants: &[TenantConfig]) -> Self {
        let entries = tenants
            .iter()
            .filter_map(|t| decode_hex32(&t.key_sha256).map(|h| (h, t.name.clone(), t.role)))
            .collect();
        Self { entries }
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tenant and role of `key`, if it is one of ours.
    pub fn lookup(&self, key: &str) -> Option<(&str, Role)> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (hash, tenant, role) in &self.entries {
            if ct_eq(hash, &digest) {
                found = Some((tenant.as_str(), *role));
            }
        }
        found
    }
}

/// The keys of the engine's current roster, and whether callers on this
/// machine are admins when there are none (`[auth] loopback_admin`).
#[derive(Debug)]
pub struct KeyRing {
    engine: Engine,
    loopback_admin: bool,
    /// The table built for one roster generation.
    cached: RwLock<(u64, Arc<Keys>)>,
}

impl KeyRing {
    /// Keys of `engine`'s roster, now and after every reload.
    pub fn new(engine: Engine) -> Self {
        let tenants = engine.tenants();
        let keys = Arc::new(Keys::from_config(&tenants.list));
        Self {
            loopback_admin: engine.config().auth.loopback_admin,
            engine,
            cached: RwLock::new((tenants.generation, keys)),
        }
    }

    /// The keys as configured now.
    pub fn current(&self) -> Arc<Keys> {
        let tenants = self.engine.tenants();
        {
            let c = self.cached.read().unwrap_or_else(|p| p.into_inner());
            if c.0 == tenants.generation {
                return c.1.clone();
            }
        }
        let keys = Arc::new(Keys::from_config(&tenants.list));
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) =
            (tenants.generation, keys.clone());
        keys
    }

    /// Whether no key is configured now.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }
}

/// Lower-case hex SHA-256 of `key`, as `key_sha256` wants it.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant name.
    pub tenant: String,
    /// Whether the caller holds an admin key.
    pub admin: bool,
}

impl Caller {
    /// The engine's view of this caller.
    pub fn access(&self) -> swarm_engine::Access<'_> {
        swarm_engine::Access {
            tenant: &self.tenant,
            admin: self.admin,
        }
    }
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<KeyRing>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = Arc::<KeyRing>::from_ref(state).current();
        if keys.is_empty() {
            let tenant = match parts.headers.get("x-tenant") {
                None => "default".to_string(),
                Some(v) => {
                    let t = v.to_str().unwrap_or("");
                    if !valid_tenant(t) {
                        return Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "invalid_field",
                            "X-Tenant must be 1-64 characters of letters, digits, `_`, `-` or `.`",
                        )
                        .with_field("X-Tenant"));
                    }
                    t.to_string()
                }
            };
            return Ok(Caller {
                tenant,
                admin: false,
            });
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("missing `Authorization: Bearer <key>`"));
        };
        let value = value.to_str().unwrap_or("");
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("expected `Authorization: Bearer <key>`"))?;
        match keys.lookup(key) {
            Some((tenant, role)) => Ok(Caller {
                tenant: tenant.to_string(),
                admin: role == Role::Admin,
            }),
            None => Err(unauthorized("unknown API key")),
        }
    }
}

/// A caller allowed on admin endpoints (instance changes, profiles). With
/// keys configured, one holding an `admin` key (`401` without a valid key,
/// `403` with a client's). Without keys, nothing tells an operator from a
/// client: a peer on this machine is admin only where `[auth]
/// loopback_admin = true` says so, since "on this machine" also covers a
/// reverse proxy relaying anyone's request (`403` otherwise).
#[derive(Debug, Clone)]
pub struct Admin {
    /// Who: the admin key's tenant (`default` when admin by loopback).
    pub caller: Caller,
    /// From where: the peer's address, when the connection knows it.
    pub peer: Option<SocketAddr>,
}

impl Admin {
    /// Logs what an admin did and how it ended, on target `swarmd::audit`
    /// at `info` (so the default filter keeps it): the tenant of the key,
    /// the peer, the action and its subject. Every change made through the
    /// API is logged, refused ones too, so a log store can answer who
    /// drained an instance and from where.
    pub fn audit<T>(&self, action: &str, subject: &str, outcome: &Result<T, ApiError>) {
        let peer = shown(self.peer);
        let outcome = match outcome {
            Ok(_) => "ok",
            Err(e) => e.code,
        };
        tracing::info!(
            target: "swarmd::audit",
            tenant = %self.caller.tenant,
            peer = %peer,
            action,
            subject,
            outcome,
            "admin {action} of {subject} by tenant `{}` from {peer}: {outcome}",
            self.caller.tenant
        );
    }
}

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Arc<KeyRing>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let forbidden = |m: &str| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m);
        let ring = Arc::<KeyRing>::from_ref(state);
        if ring.is_empty() {
            if !ring.loopback_admin {
                return Err(forbidden(
                    "admin endpoints need an admin key; with no API keys configured, \
                     set `loopback_admin = true` under [auth] to let callers on this machine in",
                ));
            }
            if is_loopback(parts) {
                return Ok(Admin {
                    caller,
                    peer: peer(parts),
                });
            }
            return Err(forbidden(
                "admin endpoints answer only on loopback while no API keys are configured",
            ));
        }
        if caller.admin {
            Ok(Admin {
                caller,
                peer: peer(parts),
            })
        } else {
            let path: String = parts.uri.path().chars().take(128).collect();
            tracing::info!(
                target: "swarmd::audit",
                tenant = %caller.tenant,
                peer = %shown(peer(parts)),
                method = %parts.method,
                path = %path,
                outcome = "forbidden",
                "admin endpoint {} {path} refused to client tenant `{}`",
                parts.method,
                caller.tenant
            );
            Err(forbidden("this endpoint needs an admin key"))
        }
    }
}

/// Whether the peer is on this machine (for admin endpoints without keys).
pub fn is_loopback(parts: &Parts) -> bool {
    peer(parts).is_some_and(|p| p.ip().is_loopback())
}

fn shown(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_string(), |p| p.to_string())
}

fn peer(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_config(&[
            TenantConfig {
                name: "acme".into(),
                role: Role::Client,
                key_sha256: hash_key("acme-secret"),
                weight: 1,
                max_outstanding: None,
                tokens_per_minute: None,
                tokens_per_day: None,
            },
            TenantConfig {
                name: "ops".into(),
                role: Role::Admin,
                key_sha256: hash_key("ops-secret").to_uppercase(),
                weight: 1,
                max_outstanding: None,
                tokens_per_minute: None,
                tokens_per_day: None,
            },
        ])
    }

    #[test]
    fn lookup_finds_tenant_and_role() {
        let k = keys();
        assert_eq!(k.lookup("acme-secret"), Some(("acme", Role::Client)));
        assert_eq!(k.lookup("ops-secret"), Some(("ops", Role::Admin)));
        assert_eq!(k.lookup("acme-secret "), None);
        assert_eq!(k.lookup(""), None);
        assert!(!k.is_empty());
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tenant_names() {
        assert!(valid_tenant("team-a.prod_1"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("a b"));
        assert!(!valid_tenant(&"x".repeat(65)));
    }
}
