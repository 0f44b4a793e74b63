//! Benchmarks run by `flightdeck bench …`. `append` works against a real PostgreSQL; `delivery` and
//! `ingest` are HTTP clients of a separately started `flightdeck serve` (see
//! `scripts/bench-delivery.sh`); `floor` measures the same fan-out without a server, the best this
//! machine can do (`scripts/bench-floor.sh`). Figures go in docs/benchmarks.md with the command that produced
//! them; tests never assert timings.

pub mod append;
pub mod client;
pub mod commit_times;
pub mod delivery;
pub mod event_frame;
pub mod floor;
pub mod floor_db;
pub mod floor_http;
pub mod ingest;
pub mod metrics;
mod report;
pub mod stats;
pub mod wire;
