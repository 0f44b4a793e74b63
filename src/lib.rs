//! FlightDeck: a real-time event platform on PostgreSQL.
//!
//! Applications append events to an event store in PostgreSQL ([`store`]); every committed event
//! reaches each subscribed client in one global order. FlightDeck runs its own PostgreSQL when none
//! is configured ([`embedded`]). See ARCHITECTURE.md for the map and the invariants.

pub mod embedded;
pub mod store;
