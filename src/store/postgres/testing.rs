//! For tests (unit and integration): a database of its own per test on the local
//! server, dropped when the handle goes. Without a server the test is skipped
//! (said on stderr), unless `CLASSHOOK_REQUIRE_POSTGRES=1` asks for a failure.

use tokio_postgres::NoTls;

/// The server tests use, unless `CLASSHOOK_TEST_POSTGRES` names another (its
/// maintenance database, where databases are created and dropped).
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test; dropped (with `FORCE`) when this is dropped.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a fresh database. `None` when the server is unreachable and
    /// `CLASSHOOK_REQUIRE_POSTGRES` is not `1` (the caller returns: skipped);
    /// panics when it is.
    pub async fn create(test: &str) -> Option<TestDatabase> {
        let admin_url = std::env::var("CLASSHOOK_TEST_POSTGRES")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
        let name = format!("classhook_t_{}", uuid::Uuid::new_v4().simple());
        match admin(&admin_url, &format!("CREATE DATABASE {name}")).await {
            Ok(()) => {}
            Err(error) => {
                let message = format!(
                    "PostgreSQL at {} is unreachable ({error})",
                    super::redact_url(&admin_url)
                );
                if std::env::var("CLASSHOOK_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!("{message}; CLASSHOOK_REQUIRE_POSTGRES=1 forbids skipping {test}");
                }
                eprintln!("SKIPPED {test}: {message}");
                return None;
            }
        }
        let url = with_database(&admin_url, &name);
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime: a thread of its own runs the statement.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a test runtime starts");
            runtime.block_on(admin(
                &admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

async fn admin(url: &str, statement: &str) -> Result<(), tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(std::time::Duration::from_secs(3));
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(connection);
    let result = client.batch_execute(statement).await;
    drop(client);
    let _ = task.await;
    result
}

/// `url` naming database `name` instead (URL form only, as the default is).
fn with_database(url: &str, name: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{name}"));
            parsed.to_string()
        }
        Err(_) => format!("{url} dbname={name}"),
    }
}
