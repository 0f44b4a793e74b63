//! Benchmarks run by `flightdeck bench …` against a real PostgreSQL. Figures go in
//! docs/benchmarks.md with the command that produced them; tests never assert timings.

pub mod append;
