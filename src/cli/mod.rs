//! The `flightdeck` command line: argument parsing ([`args`]), opening the database
//! ([`database`]), and one function per command. `main.rs` only calls [`run`].

pub mod args;
mod commands;
pub mod database;
mod demo;
mod projections;
mod serve;
mod sites;
mod tail;
pub mod token;

pub use args::Cli;

use crate::embedded::EmbeddedError;
use crate::store::StoreError;

/// Why a command failed. Each message is meant for the person who typed the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Starting or stopping the embedded PostgreSQL.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The event store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A command-line argument that cannot be used, with the reason.
    #[error("{0}")]
    Usage(String),
    /// DATABASE_URL could not be parsed.
    #[error("DATABASE_URL is not a valid PostgreSQL connection string: {0}")]
    DatabaseUrl(String),
    /// The HTTP server could not start.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// Writing output or reading input failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A benchmark failed.
    #[error(transparent)]
    Bench(#[from] crate::bench::append::BenchError),
    /// A client benchmark (`bench delivery`, `bench ingest`) failed.
    #[error(transparent)]
    BenchClient(#[from] crate::bench::client::ClientBenchError),
    /// A projection could not be read or rebuilt.
    #[error(transparent)]
    Projection(#[from] crate::projections::ProjectionError),
    /// The demo traffic generator failed.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// The sites registry refused or failed.
    #[error(transparent)]
    Sites(#[from] crate::sites::SitesError),
}

/// Runs the parsed command line to completion.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    use args::{BenchCommand, Command};
    match cli.command {
        Command::Serve(args) => serve::serve(&cli.database, &args).await,
        Command::Migrate => commands::migrate(&cli.database).await,
        Command::Append(args) => commands::append(&cli.database, &args).await,
        Command::Read(args) => commands::read(&cli.database, &args).await,
        Command::Tail(args) => tail::tail(&cli.database, &args).await,
        Command::Bench(BenchCommand::Append(args)) => commands::bench_append(&cli.database, &args).await,
        Command::Bench(BenchCommand::Delivery(args)) => Ok(crate::bench::delivery::run(&args).await?),
        Command::Bench(BenchCommand::Ingest(args)) => Ok(crate::bench::ingest::run(&args).await?),
        Command::Bench(BenchCommand::Floor(args)) => Ok(crate::bench::floor::run(&args).await?),
        Command::Bench(BenchCommand::FloorWriter(args)) => Ok(crate::bench::floor::write(&args).await?),
        Command::Projections(args::ProjectionsCommand::Rebuild) => projections::rebuild(&cli.database).await,
        Command::Demo(args) => demo::demo(&cli.database, &args).await,
        Command::Site(args::SiteCommand::Add(args)) => sites::add(&cli.database, &args).await,
        Command::Site(args::SiteCommand::List(args)) => sites::list(&cli.database, &args).await,
        Command::Site(args::SiteCommand::Remove(args)) => sites::remove(&cli.database, &args).await,
        Command::Token(token::TokenCommand::Create(args)) => token::create(&cli.database, &args),
    }
}
