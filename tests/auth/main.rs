//! Tokens and scopes on every route, over real sockets against a real PostgreSQL: refused tokens
//! (none, wrong key, `alg: none`, expired), scopes (sites, types, stream prefixes) on every read
//! path and on writes, the cookie's rules, RS256/ES256 keys, expiry ending streams, the per-token
//! stream limit, and the real binary's defaults.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod expiry;
mod process;
mod reads;
mod streams;
mod support;
mod writes;
