//! Which operating-system user runs PostgreSQL.
//!
//! `initdb` and `postgres` refuse to run as root. When FlightDeck itself is root, they run as the
//! unprivileged `postgres` system user (via `Command::uid`, no sudo), which must then own the
//! cluster's files and be able to walk down to them.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use super::EmbeddedError;

/// The user PostgreSQL's processes run as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Owner {
    /// Not root: PostgreSQL runs as whoever runs FlightDeck.
    CurrentUser,
    /// Root: PostgreSQL runs as this unprivileged user.
    Switch { uid: Uid, gid: Gid },
}

impl Owner {
    pub(crate) fn detect() -> Result<Self, EmbeddedError> {
        if !Uid::effective().is_root() {
            return Ok(Owner::CurrentUser);
        }
        match User::from_name("postgres") {
            Ok(Some(user)) if !user.uid.is_root() => Ok(Owner::Switch { uid: user.uid, gid: user.gid }),
            _ => Err(EmbeddedError::NoPostgresUser),
        }
    }

    /// Makes `cmd` run as this owner.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if let Owner::Switch { uid, gid } = *self {
            cmd.uid(uid.as_raw()).gid(gid.as_raw()).env("USER", "postgres").env("LOGNAME", "postgres");
        }
    }

    /// Gives `path` (a directory FlightDeck created for PostgreSQL) to this owner.
    pub(crate) fn give(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Owner::Switch { uid, gid } = *self {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(EmbeddedError::io("cannot give to the postgres user", path))?;
        }
        Ok(())
    }

    /// Checks that the owner can traverse every ancestor of `dir`, so that PostgreSQL's failure is
    /// explained before it happens instead of as a cryptic `initdb` error.
    pub(crate) fn check_reachable(&self, dir: &Path) -> Result<(), EmbeddedError> {
        let Owner::Switch { uid, gid } = *self else { return Ok(()) };
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else { continue };
            let mode = meta.permissions().mode();
            let ok = if meta.uid() == uid.as_raw() {
                mode & 0o100 != 0
            } else if meta.gid() == gid.as_raw() {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                return Err(EmbeddedError::Unreachable {
                    data_dir: dir.to_path_buf(),
                    blocked: ancestor.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}
