//! The embedded store is reachable from this process only: it opens no
//! socket, and its file is its owner's.
//!
//! The socket check lists this test process's file descriptors, so it has a
//! test binary of its own, and no other test here may open a socket while
//! it runs.
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ratelimiter::Builder;
use ratelimiter_embedded::FILE;
use ratelimiter_testing::{Format, Logs};

async fn embedded(data_dir: &Path) -> ratelimiter_dynamodb::DynamoDbStore {
    match ratelimiter_embedded::open(data_dir, "RateLimits").await {
        Ok(store) => store,
        Err(error) => panic!("the embedded store opens: {error}"),
    }
}

/// This process's open sockets, as `/proc/self/fd` names them
/// (`socket:[inode]`).
fn sockets() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:"))
        .collect()
}

#[tokio::test]
async fn the_embedded_store_opens_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    // Standard streams may be sockets already (a CI runner's), inherited.
    let before = sockets();

    let service = Builder::new().build(embedded(&dir.path().join("state")).await);
    for _ in 0..10 {
        assert!(
            service
                .check_listener_join_limit("203.0.113.7")
                .await
                .unwrap()
                .allowed()
        );
    }
    let denied = service.check_listener_join_limit("203.0.113.7").await;
    assert!(denied.is_err(), "the 11th join is denied: {denied:?}");
    // The decisions went through the table, not around it.
    assert!(
        dir.path()
            .join("state")
            .join(FILE)
            .metadata()
            .unwrap()
            .len()
            > 0
    );
    let new = |before: &BTreeSet<String>| &sockets() - before;
    assert_eq!(
        new(&before),
        BTreeSet::new(),
        "the embedded store serves without a socket, so no other process can reach it"
    );

    // The check sees a socket when there is one: a listener on loopback, as
    // the embedded store had before.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(new(&before).len(), 1, "the check finds a listening socket");
    drop(listener);
}

#[tokio::test]
async fn a_new_data_dir_and_file_are_their_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("a").join("state");
    let _store = embedded(&data_dir).await;
    let mode = |path: &Path| path.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&data_dir.join(FILE)), 0o600);
    // SQLite's journal files take the database file's permissions.
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[tokio::test]
async fn a_file_others_may_read_is_kept_and_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("state");
    // A store made before files were private: other users may read it.
    drop(embedded(&data_dir).await);
    let file = data_dir.join(FILE);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let (logs, _guard) = Logs::capture(Format::Text);
    let store = embedded(&data_dir).await;
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("chmod 600"), "{text}");
    assert!(text.contains("mode=644"), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    // Kept as it was: the operator decides, and the store still works.
    assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o644);
    let service = Builder::new().build(store);
    assert!(
        service
            .check_heartbeat_limit("conn-1")
            .await
            .unwrap()
            .allowed()
    );
}
