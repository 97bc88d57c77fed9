//! `classhook events`: the latest stored events, read straight from the data directory,
//! with both identifiers `GET /api/v1/events/{id}` accepts.

use std::process::ExitCode;

use clap::Args;

use crate::api::views::EventView;
use crate::clock::format_ms;
use crate::config::Config;
use crate::event::EventStatus;
use crate::store::EventFilter;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this source.
    #[arg(long)]
    source: Option<String>,
    /// Only events of this type, e.g. CLASS_CREATED; or a pattern as subscriptions
    /// take: CLASS_* (every type starting with CLASS_) or *.
    #[arg(long = "type", value_parser = parse_type)]
    event_type: Option<String>,
    /// Only events with this status: ok, unknown_type or quarantined.
    #[arg(long, value_parser = parse_status)]
    status: Option<EventStatus>,
    /// How many events to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One JSON object per line (as the API's `/api/v1/events` items).
    #[arg(long)]
    json: bool,
}

fn parse_type(text: &str) -> Result<String, String> {
    if crate::deliver::subscription::valid_pattern(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not an exact type, a prefix pattern such as CLASS_* or *: a `*` only at the end"
        ))
    }
}

fn parse_status(text: &str) -> Result<EventStatus, String> {
    EventStatus::parse(text)
        .ok_or_else(|| format!("{text:?} is not ok, unknown_type or quarantined"))
}

pub async fn run(config: Config, args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_for_reading(&config).await?;
    let events = store
        .list_events(EventFilter {
            source: args.source.clone(),
            event_type: args.event_type.clone(),
            status: args.status,
            limit: args.limit,
            ..EventFilter::default()
        })
        .await?;
    if args.json {
        let mut out = std::io::stdout().lock();
        for e in events {
            super::print_json_line(&mut out, &EventView::from(e))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Both identifiers are what `GET /api/v1/events/{id}` takes: the sequence number,
    // and the platform's (the DreamClass id, a Loopwise event's sha256 key).
    println!(
        "{:>8}  {:<24}  {:<16}  {:<26}  {:<12}  {:>4}  platform id",
        "seq", "received", "source", "type", "status", "seen"
    );
    for e in events {
        let id = e.event_id.unwrap_or_else(|| e.dedupe_key.clone());
        println!(
            "{:>8}  {:<24}  {:<16}  {:<26}  {:<12}  {:>4}  {id}",
            e.seq,
            format_ms(e.received_at_ms),
            e.source,
            e.event_type,
            e.status.as_str(),
            e.times_seen,
        );
    }
    Ok(ExitCode::SUCCESS)
}
