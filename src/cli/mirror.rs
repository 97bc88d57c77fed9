//! `classhook mirror rebuild`: recompute the mirror from the event log.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Recompute every mirrored entity from the stored events, in receive order.
    /// The new mirror is built beside the live one while a running gateway keeps
    /// ingesting, then replaces it in one short transaction.
    Rebuild,
}

pub async fn run(config: Config, command: &MirrorCommand) -> anyhow::Result<ExitCode> {
    match command {
        MirrorCommand::Rebuild => {
            let store = super::open_existing(&config).await?;
            let started = std::time::Instant::now();
            let bar = super::progress::Bar::new("rebuilding the mirror", "events").shared();
            let report = store.rebuild_mirror(bar.clone()).await;
            bar.finish();
            let report = report?;
            println!(
                "mirror rebuilt from {} events ({} changed an entity, {} re-described) in {:.1?}",
                report.events,
                report.applied,
                report.redescribed,
                started.elapsed()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
