//! `classhook backup FILE`: a consistent copy of the store, taken while it runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The new file to write (never overwritten), e.g. classhook-2026-12-02.db.
    to: PathBuf,
}

pub async fn run(config: Config, args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_for_reading(&config).await?;
    let started = std::time::Instant::now();
    let report = store.backup(&args.to).await?;
    println!(
        "backed up {} events ({:.1} MiB) to {} in {:.1?}",
        report.events,
        report.bytes as f64 / (1024.0 * 1024.0),
        args.to.display(),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
