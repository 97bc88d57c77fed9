//! Which store the integration tests run on. By default SQLite in each test's data
//! directory; with `CLASSHOOK_TEST_BACKEND=postgres` every config the harness writes
//! names a fresh PostgreSQL database of its own on the local server (dropped when the
//! test process exits), so that the same tests check both backends.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use classhook::store::postgres::testing::TestDatabase;

/// Databases made for this test process, by the test directory they belong to;
/// dropped at its exit.
static DATABASES: Mutex<Vec<(PathBuf, TestDatabase)>> = Mutex::new(Vec::new());

pub fn is_postgres() -> bool {
    std::env::var("CLASSHOOK_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// Says that a test needs PostgreSQL (it runs in the PostgreSQL pass); the caller
/// returns.
pub fn skip_unless_postgres(test: &str, why: &str) -> bool {
    if !is_postgres() {
        eprintln!("SKIPPED {test} on SQLite (it runs in the PostgreSQL pass): {why}");
        return true;
    }
    false
}

/// Says that a test does not apply to this run's backend; the caller returns.
pub fn skip_unless_sqlite(test: &str, why: &str) -> bool {
    if is_postgres() {
        eprintln!("SKIPPED {test} on PostgreSQL: {why}");
        return true;
    }
    false
}

/// The `[database]` section of a test config in `dir`: empty for SQLite, else the
/// database of that directory (made on first use, so that every config written
/// for one test directory names the same database, as they name the same data_dir).
pub fn database_section(dir: &Path) -> String {
    if !is_postgres() {
        return String::new();
    }
    let section = |url: &str| format!("\n[database]\nurl = {url:?}\n");
    if let Some((_, database)) = DATABASES.lock().unwrap().iter().find(|(d, _)| d == dir) {
        return section(database.url());
    }
    // A thread of its own: callers may be inside a runtime, or not.
    let created = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(TestDatabase::create("integration"))
    })
    .join()
    .unwrap();
    let Some(database) = created else {
        panic!("CLASSHOOK_TEST_BACKEND=postgres but no PostgreSQL server answers");
    };
    let text = section(database.url());
    DATABASES
        .lock()
        .unwrap()
        .push((dir.to_path_buf(), database));
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(drop_databases);
    });
    text
}

extern "C" fn drop_databases() {
    let databases = std::mem::take(&mut *DATABASES.lock().unwrap_or_else(|e| e.into_inner()));
    drop(databases);
}

/// The URL of `dir`'s PostgreSQL database, if this run made one.
pub fn database_url(dir: &Path) -> Option<String> {
    DATABASES
        .lock()
        .unwrap()
        .iter()
        .find(|(d, _)| d == dir)
        .map(|(_, database)| database.url().to_string())
}

/// Runs SQL statements directly on the database of the test directory `dir`,
/// whichever backend holds it (for tests that stage what an older version stored).
pub async fn execute(dir: &Path, sql: &str) {
    match database_url(dir) {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            client.batch_execute(sql).await.unwrap();
            drop(client);
            let _ = task.await;
        }
        None => {
            let conn = rusqlite::Connection::open(sqlite_file(dir)).unwrap();
            conn.execute_batch(sql).unwrap();
        }
    }
}

/// The first row of a query whose columns are all integers (counts).
pub async fn query_counts(dir: &Path, sql: &str) -> Vec<i64> {
    match database_url(dir) {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            let row = client.query_one(sql, &[]).await.unwrap();
            let counts = (0..row.len()).map(|i| row.get::<_, i64>(i)).collect();
            drop(client);
            let _ = task.await;
            counts
        }
        None => {
            let conn = rusqlite::Connection::open(sqlite_file(dir)).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            let columns = stmt.column_count();
            stmt.query_row([], |r| (0..columns).map(|i| r.get::<_, i64>(i)).collect())
                .unwrap()
        }
    }
}

fn sqlite_file(dir: &Path) -> PathBuf {
    dir.join("data").join("classhook.db")
}
