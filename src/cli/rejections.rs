//! `classhook rejections`: the latest refused requests, with why.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use crate::api::views::RejectionView;
use crate::clock::format_ms;
use crate::config::Config;
use crate::store::RejectionFilter;

#[derive(Debug, Args)]
pub struct RejectionsArgs {
    /// Only requests to this source name (as requested).
    #[arg(long)]
    source: Option<String>,
    /// Only this reason, e.g. signature_invalid or id_conflict.
    #[arg(long)]
    reason: Option<String>,
    /// How many to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One JSON object per line (as the API's `/api/v1/rejections` items).
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, args: &RejectionsArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_for_reading(&config).await?;
    let rejections = store
        .find_rejections(RejectionFilter {
            source: args.source.clone(),
            reason: args.reason.clone(),
            before_id: None,
            limit: args.limit,
        })
        .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in rejections {
            super::print_json_line(&mut out, &RejectionView::from(r))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<24}  {:<16}  {:>6}  {:<22}  message",
        "at", "source", "status", "reason"
    )?;
    for r in rejections {
        writeln!(
            out,
            "{:<24}  {:<16}  {:>6}  {:<22}  {}",
            format_ms(r.at_ms),
            r.source.unwrap_or_default(),
            r.status,
            r.reason,
            r.message
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
