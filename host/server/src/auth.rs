//! Who is calling: the tenant whose API key a request presents, found by
//! comparing the key's SHA-256 with every stored hash in constant time.

use super::error::ApiError;
use axum::http::{HeaderMap, StatusCode, header};
use mantle_node::{Node, Tenant};
use mantle_types::Sha256;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The credential of a request's `Authorization` header, for tenants and
/// the operator alike: `Bearer <token>`, the scheme in any case (RFC 9110
/// §11.1), the token trimmed. `Ok(None)` without the header; an error
/// message when the header is there but is not a bearer credential.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| "the Authorization header is not text")?;
    let (scheme, token) =
        value.trim_start().split_once(' ').ok_or("the Authorization header must be `Bearer <token>`")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("the Authorization header must be `Bearer <token>`");
    }
    Ok(Some(token))
}

/// Whether `token` is the one whose SHA-256 is `expected`, compared in
/// constant time.
pub fn token_matches(expected: &Sha256, token: &str) -> bool {
    bool::from(expected.0.ct_eq(&Sha256::of(token.as_bytes()).0))
}

/// The tenant of a request: the one whose key it carries, or the node's
/// open tenant when it carries none and the node has one.
pub fn authenticate(node: &Node, headers: &HeaderMap) -> Result<Arc<Tenant>, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let Some(key) = bearer_token(headers).map_err(unauthorized)? else {
        return node
            .open_tenant()
            .cloned()
            .ok_or_else(|| unauthorized("this endpoint needs an API key: send `Authorization: Bearer <key>`"));
    };
    find_tenant(node, &Sha256::of(key.as_bytes())).ok_or_else(|| unauthorized("the API key is not valid"))
}

/// Compares `hash` with every stored key hash in constant time and never
/// stops early, so the time taken says nothing about how close a guess came
/// or which tenant it matched.
fn find_tenant(node: &Node, hash: &Sha256) -> Option<Arc<Tenant>> {
    let mut found = None;
    for tenant in node.tenants() {
        for stored in tenant.key_hashes() {
            if bool::from(stored.0.ct_eq(&hash.0)) {
                found = Some(Arc::clone(tenant));
            }
        }
    }
    found
}
