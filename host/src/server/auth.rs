//! Who is calling: the tenant whose API key a request presents, found by
//! comparing the key's SHA-256 with every stored hash in constant time.

use super::error::ApiError;
use crate::node::{Node, Tenant};
use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The SHA-256 of an API key, as the configuration stores it.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The tenant of a request: the one whose key it carries, or the node's
/// open tenant when it carries none and the node has one.
pub fn authenticate(node: &Node, headers: &HeaderMap) -> Result<Arc<Tenant>, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return node
            .open_tenant()
            .cloned()
            .ok_or_else(|| unauthorized("this endpoint needs an API key: send `Authorization: Bearer <key>`"));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
    find_tenant(node, &key_hash(key)).ok_or_else(|| unauthorized("the API key is not valid"))
}

/// Compares `hash` with every stored key hash in constant time and never
/// stops early, so the time taken says nothing about how close a guess came
/// or which tenant it matched.
fn find_tenant(node: &Node, hash: &[u8; 32]) -> Option<Arc<Tenant>> {
    let mut found = None;
    for tenant in node.tenants() {
        for stored in &tenant.key_hashes {
            if bool::from(stored.0.ct_eq(hash)) {
                found = Some(Arc::clone(tenant));
            }
        }
    }
    found
}
