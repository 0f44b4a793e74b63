//! FlightDeck: a real-time event platform on PostgreSQL.
//!
//! Applications append events to an event store in PostgreSQL ([`store`]); every committed event
//! reaches each subscribed client in one global order. FlightDeck runs its own PostgreSQL when none
//! is configured ([`embedded`]). The HTTP routes ([`http`]) are an axum `Router` an application can
//! mount; [`cli`] is the `flightdeck` command. See ARCHITECTURE.md for the map and the invariants.

pub mod auth;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod demo;
pub mod embedded;
pub mod http;
pub mod projections;
pub mod sites;
pub mod store;
pub mod tracker;
