//! The embedded PostgreSQL's life cycle under crashes: a killed FlightDeck, an orphaned server,
//! a stale postmaster.pid.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::process::{Server, alive, flightdeck, postmaster_pid, run, scratch_dir, stderr, stdout, wait_gone};
use nix::sys::signal::{Signal, kill};

fn append(data: &std::path::Path, ty: &str) {
    let out = run(flightdeck().env("FLIGHTDECK_DATA_DIR", data).args(["append", "s", ty, "{}"]));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn count(data: &std::path::Path) -> usize {
    let out = run(flightdeck().env("FLIGHTDECK_DATA_DIR", data).args(["read", "s"]));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().count()
}

#[tokio::test]
async fn killing_flightdeck_outright_still_stops_its_postgres() {
    let dir = scratch_dir();
    let data = dir.path().join("fd");
    let server = Server::start(|c| {
        c.env("FLIGHTDECK_DATA_DIR", &data);
    });
    server.wait_ready().await;
    let postmaster = postmaster_pid(&data).unwrap();
    assert!(alive(postmaster));
    // SIGKILL: no destructor runs; the lifeline pipe closing is what stops PostgreSQL.
    assert!(!server.stop(Signal::SIGKILL));
    wait_gone(postmaster);
    append(&data, "AfterCrash");
    assert_eq!(count(&data), 1);
}

#[test]
fn an_orphaned_postgres_on_the_data_directory_is_stopped_and_replaced() {
    let dir = scratch_dir();
    let data = dir.path().join("fd");
    append(&data, "First");
    // A postmaster left running on the cluster with no FlightDeck supervising it (as if its
    // supervisor had been killed outright).
    let pgdata = data.join("postgres/data");
    let bin = flightdeck::embedded::find_binaries(None, None).unwrap();
    let mut cmd = std::process::Command::new(bin.postgres());
    cmd.arg("-D")
        .arg(&pgdata)
        .args(["-c", "listen_addresses=", "-c"])
        .arg(format!("unix_socket_directories={}", data.join("postgres").display()));
    if nix::unistd::Uid::effective().is_root() {
        let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let mut orphan = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while postmaster_pid(&data).is_none() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let orphan_pid = nix::unistd::Pid::from_raw(orphan.id() as i32);

    append(&data, "Second");
    let _ = orphan.wait();
    assert!(!alive(orphan_pid), "the orphan was stopped");
    assert_eq!(count(&data), 2);
}

#[test]
fn a_stale_postmaster_pid_is_handled() {
    let dir = scratch_dir();
    let data = dir.path().join("fd");
    append(&data, "First");
    let pidfile = data.join("postgres/data/postmaster.pid");
    let live_other = std::process::id().to_string();
    // Data-driven: what a crash might leave behind.
    let cases = [
        ("a live process that is not PostgreSQL", format!("{live_other}\n{}\n", data.display())),
        ("a pid no process has", "4194000\n/nowhere\n".to_string()),
        ("garbage", "not a pid at all".to_string()),
    ];
    for (i, (what, content)) in cases.iter().enumerate() {
        std::fs::write(&pidfile, content).unwrap();
        append(&data, what);
        assert_eq!(count(&data), i + 2, "{what}");
        assert!(!pidfile.exists(), "{what}: PostgreSQL stopped cleanly again");
    }
    // The test process itself was not harmed by being named in the pid file.
    assert!(kill(nix::unistd::Pid::this(), None).is_ok());
}

#[test]
fn a_data_directory_the_postgres_user_cannot_reach_still_works_as_root() {
    if !nix::unistd::Uid::effective().is_root() {
        // Not root: PostgreSQL runs as the current user, who can reach their own directories.
        let dir = scratch_dir();
        append(&dir.path().join("fd"), "AsUser");
        assert_eq!(count(&dir.path().join("fd")), 1);
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir();
    let private = dir.path().join("home");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = private.join("fd");
    append(&data, "First");
    append(&data, "Second");
    assert_eq!(count(&data), 2);
    let target = std::fs::read_link(data.join("postgres")).unwrap();
    assert!(target.starts_with(flightdeck::embedded::RELOCATED_ROOT), "{}", target.display());
    std::fs::remove_dir_all(target.parent().unwrap()).unwrap();
}
