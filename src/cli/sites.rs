//! `flightdeck site add|list|remove`: the sites registry ([`crate::sites`]) from the command line.
//!
//! They work on the same database as `serve` (`DATABASE_URL`, or the embedded cluster of the data
//! directory, which they attach to while a server runs it), migrating it first like the other
//! one-shot commands. A running server notices a change within a second or two: no restart.

use std::io::Write as _;

use crate::sites::{AddMode, Origin};

use super::CliError;
use super::args::{DatabaseArgs, SiteAddArgs, SiteListArgs, SiteRemoveArgs};
use super::commands::with_database;

pub(super) async fn add(args: &DatabaseArgs, add: &SiteAddArgs) -> Result<(), CliError> {
    // Everything that can be checked without the database is, so a typo costs no cluster start.
    crate::sites::check_id(&add.id)?;
    let origins = add
        .origins
        .iter()
        .map(|o| Origin::parse(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(crate::sites::SitesError::from)?;
    let mode = if add.replace { AddMode::Replace } else { AddMode::Merge };
    let added =
        with_database(args, 1, true, async |db| Ok(crate::sites::add(&db.store, &add.id, &origins, mode).await?))
            .await?;
    let id = &add.id;
    let now = joined(&added.after);
    let line = if added.created {
        format!("registered site {id}, accepting events from {now}")
    } else if !added.changed() {
        format!("site {id} already accepts events from {now}; nothing changed")
    } else {
        format!("site {id} now accepts events from {now} (before: {})", joined(&added.before))
    };
    writeln!(std::io::stdout(), "{line}")?;
    if added.changed() && added.after.contains(&Origin::Any) {
        eprintln!("note: with *, pages on any website can send events as site {id}");
    }
    Ok(())
}

pub(super) async fn list(args: &DatabaseArgs, list: &SiteListArgs) -> Result<(), CliError> {
    let sites = with_database(args, 1, true, async |db| Ok(crate::sites::list(&db.store).await?)).await?;
    let mut out = std::io::stdout().lock();
    if list.json {
        serde_json::to_writer_pretty(&mut out, &sites).map_err(std::io::Error::other)?;
        writeln!(out)?;
        return Ok(());
    }
    if sites.is_empty() {
        eprintln!("no sites registered; register one with `flightdeck site add <id> --origin https://…`");
        return Ok(());
    }
    let rows: Vec<[String; 3]> = sites
        .iter()
        .map(|s| [s.id.clone(), joined(&s.origins), s.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()])
        .collect();
    let header = ["SITE".to_string(), "ORIGINS".to_string(), "REGISTERED".to_string()];
    let widths: Vec<usize> =
        (0..3).map(|i| rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in [&header].into_iter().chain(&rows) {
        writeln!(out, "{:<w0$}  {:<w1$}  {}", row[0], row[1], row[2], w0 = widths[0], w1 = widths[1])?;
    }
    Ok(())
}

pub(super) async fn remove(args: &DatabaseArgs, remove: &SiteRemoveArgs) -> Result<(), CliError> {
    crate::sites::check_id(&remove.id)?;
    let origins =
        with_database(args, 1, true, async |db| Ok(crate::sites::remove(&db.store, &remove.id).await?)).await?;
    writeln!(
        std::io::stdout(),
        "removed site {} (it accepted events from {}); its stored events are kept",
        remove.id,
        joined(&origins)
    )?;
    Ok(())
}

fn joined(origins: &[Origin]) -> String {
    origins.iter().map(Origin::as_str).collect::<Vec<_>>().join(", ")
}
