//! Finding the machine's PostgreSQL server binaries.
//!
//! FlightDeck never downloads PostgreSQL: zero config means using what the machine already has. The
//! issue's search order is PATH, `pg_config --bindir`, then `/usr/lib/postgresql/*/bin`; among all
//! candidates the newest major version wins, unless an existing cluster needs a specific one.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::EmbeddedError;

/// A directory holding `initdb` and `postgres`, with the major version they report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// Directory containing `initdb` and `postgres`.
    pub dir: PathBuf,
    /// Major version, e.g. 15 (from `postgres --version`).
    pub major: u32,
}

impl Binaries {
    /// Path of the `initdb` program.
    pub fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    /// Path of the `postgres` server program.
    pub fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }
}

/// Finds server binaries: in `explicit` only when given (FLIGHTDECK_PG_BIN_DIR), else by searching.
/// With `want_major`, a directory of that major version is required (an existing cluster can only
/// be opened by its own major version).
pub fn find(explicit: Option<&Path>, want_major: Option<u32>) -> Result<Binaries, EmbeddedError> {
    let mut seen: Vec<Binaries> = Vec::new();
    let dirs = match explicit {
        Some(dir) => vec![dir.to_path_buf()],
        None => candidate_dirs(),
    };
    for dir in dirs {
        if !dir.join("initdb").is_file() || !dir.join("postgres").is_file() {
            continue;
        }
        // Resolve symlinks such as /usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres,
        // so one installation found twice counts once, and initdb comes from the same place.
        let Some(dir) = dir.join("postgres").canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf)) else {
            continue;
        };
        if !dir.join("initdb").is_file() {
            continue;
        }
        if seen.iter().any(|b| b.dir == dir) {
            continue;
        }
        if let Some(major) = major_version(&dir.join("postgres")) {
            seen.push(Binaries { dir, major });
        }
    }
    // Stable sort keeps the search order among equal versions.
    seen.sort_by_key(|b| std::cmp::Reverse(b.major));
    match want_major {
        None => seen.into_iter().next().ok_or(EmbeddedError::NoBinaries),
        Some(major) => {
            let found: Vec<u32> = seen.iter().map(|b| b.major).collect();
            seen.into_iter().find(|b| b.major == major).ok_or(EmbeddedError::VersionMismatch { cluster: major, found })
        }
    }
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !text.is_empty() {
            dirs.push(PathBuf::from(text));
        }
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let major = name.split('.').next()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versioned.into_iter().map(|(_, p)| p));
    dirs
}

/// Parses `postgres (PostgreSQL) 15.18 (Debian ...)` into 15.
fn major_version(postgres: &Path) -> Option<u32> {
    let out = Command::new(postgres).arg("--version").output().ok()?;
    parse_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_major(text: &str) -> Option<u32> {
    let version = text.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn parses_versions_of_several_shapes() {
        let cases = [
            ("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", Some(15)),
            ("postgres (PostgreSQL) 17.2", Some(17)),
            ("postgres (PostgreSQL) 18beta1", Some(18)),
            ("postgres (PostgreSQL) 9.6.24", Some(9)),
            ("garbage", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_major(text), want, "{text}");
        }
    }
}
