//! The analytics backend (issue 5) over real sockets and a real PostgreSQL: the tracker's
//! ingestion, the projections (exact against the raw log, across restarts, concurrent projectors
//! and rebuilds), the stats API and its live stream, and the demo traffic through the real binary.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod demo;
mod projections;
mod stats;
mod support;
mod tracker;
