//! `classhook db copy --from-sqlite DIR`: moves an SQLite store into the configured
//! (empty) PostgreSQL database; see `store::copy`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::progress::Bar;
use crate::config::Config;
use crate::store::Location;
use crate::store::copy::{self, CopyOptions, CopyOutcome};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy an SQLite store (events with their exact bodies, the mirror,
    /// subscriptions with their state, deliveries with their attempts, the rejection
    /// log) into the empty PostgreSQL database of `[database] url`. Interrupted, run
    /// it again: it goes on where it stopped.
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The SQLite store's data directory (the one holding classhook.db).
    #[arg(long)]
    from_sqlite: PathBuf,
    /// Rows per chunk; each chunk is committed on its own.
    #[arg(long, default_value_t = 5000)]
    chunk: usize,
    /// Stop after this many chunks (copy in several sittings; run again to go on).
    #[arg(long)]
    max_chunks: Option<usize>,
}

pub async fn run(config: Config, command: &DbCommand) -> anyhow::Result<ExitCode> {
    let DbCommand::Copy(args) = command;
    let Location::Postgres { url } = config.store_location() else {
        bail!(
            "db copy moves a store into PostgreSQL: set [database] url (or CLASSHOOK_DATABASE_URL) to the target database"
        );
    };
    let bar = Bar::new("copying", "rows").shared();
    let outcome = copy::sqlite_to_postgres(
        &args.from_sqlite,
        &url,
        CopyOptions {
            chunk: args.chunk,
            max_chunks: args.max_chunks,
        },
        bar.clone(),
    )
    .await;
    bar.finish();
    match outcome? {
        CopyOutcome::Paused { rows } => {
            println!(
                "copied {rows} rows and stopped as asked; run the same command again to go on"
            );
            Ok(ExitCode::SUCCESS)
        }
        CopyOutcome::Finished(counts) => {
            println!("{:<24}  {:>10}  {:>10}", "table", "sqlite", "postgresql");
            let mut equal = true;
            for count in &counts {
                let mark = if count.source == count.target {
                    ""
                } else {
                    "  DIFFERENT"
                };
                equal &= count.source == count.target;
                println!(
                    "{:<24}  {:>10}  {:>10}{mark}",
                    count.table, count.source, count.target
                );
            }
            if !equal {
                bail!("the copy is incomplete: the counts above differ");
            }
            println!(
                "copied and verified: {} holds the store now",
                Location::Postgres { url }.shown()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
