//! The storage foundation: migrations on first use, racing requests, WAL.

use kizuna_tests::stores::RusqliteDb;

#[test]
fn racing_first_requests_migrate_exactly_once() {
    // Arrange: a file no request has touched yet.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sqlite_db.db");

    // Act: eight connections prepare it at the same moment, as eight
    // concurrent first requests would.
    let barrier = std::sync::Barrier::new(8);
    let results: Vec<anyhow::Result<kizuna::ports::Backend>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let db = RusqliteDb::open(&path)?;
                    barrier.wait();
                    futures::executor::block_on(kizuna::db::prepare(&db))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Assert: all succeeded, the schema is current, the file is in WAL.
    for (index, result) in results.iter().enumerate() {
        assert!(
            matches!(result, Ok(kizuna::ports::Backend::SqliteFile)),
            "connection {index}: {result:?}"
        );
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, kizuna::db::SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'contacts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);
}

#[test]
fn a_current_database_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sqlite_db.db");
    let db = RusqliteDb::open(&path).unwrap();
    futures::executor::block_on(kizuna::db::prepare(&db)).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO rate_limits (bucket, window_start, hits) VALUES ('b', 1, 1)",
        [],
    )
    .unwrap();

    futures::executor::block_on(kizuna::db::prepare(&RusqliteDb::open(&path).unwrap())).unwrap();

    let rows: i64 = conn
        .query_row("SELECT count(*) FROM rate_limits", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "a second prepare must not re-run migrations");
}
