//! `classhook event show ID`: one stored event in full, by any of its names.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::api::views::EventDetail;
use crate::clock::format_ms;
use crate::config::Config;
use crate::lookup;

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Show one event: its status, headers and body (pretty-printed JSON).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The event: its sequence number (`seq` in `classhook events`), a DreamClass
    /// event id (UUID) or a Loopwise `sha256:<hex>` key.
    id: String,
    /// The source, when the platform id names events of several sources.
    #[arg(long)]
    source: Option<String>,
    /// Write only the body, byte for byte as the platform sent it.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    /// Print the event as one JSON object (as `GET /api/v1/events/{id}` answers).
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, command: &EventCommand) -> anyhow::Result<ExitCode> {
    let EventCommand::Show(args) = command;
    let store = super::open_for_reading(&config).await?;
    let event = lookup::find_event(&store, &args.id, args.source.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    if args.raw {
        out.write_all(&event.body)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        super::print_json_line(&mut out, &EventDetail::from(event))?;
        return Ok(ExitCode::SUCCESS);
    }
    let e = &event.summary;
    let field = |name: &str, value: &dyn std::fmt::Display| format!("{name:<14} {value}\n");
    let mut text = String::new();
    text += &field("seq", &e.seq);
    text += &field("source", &format!("{} ({})", e.source, e.provider.as_str()));
    if let Some(tenant) = &e.tenant {
        text += &field("tenant", tenant);
    }
    text += &field("type", &e.event_type);
    text += &field(
        "platform id",
        &e.event_id.as_deref().unwrap_or(&e.dedupe_key),
    );
    let status = match &e.status_reason {
        Some(reason) => format!("{} ({reason})", e.status.as_str()),
        None => e.status.as_str().to_string(),
    };
    text += &field("status", &status);
    text += &field("received", &format_ms(e.received_at_ms));
    text += &field(
        "seen",
        &format!(
            "{} time(s), last {}; {} conflicting copies",
            e.times_seen,
            format_ms(e.last_seen_at_ms),
            e.conflicts
        ),
    );
    let entity = match &e.entity_id {
        Some(id) => format!("{} {id} ({})", e.entity_kind, e.entity_op),
        None => format!("{} ({})", e.entity_kind, e.entity_op),
    };
    text += &field("entity", &entity);
    if let Some(effect) = &e.mirror_effect {
        text += &field("mirror", effect);
    }
    text += "\nheaders\n";
    for (name, value) in &event.headers {
        text += &format!("  {name}: {value}\n");
    }
    text += "\nbody\n";
    text += &match serde_json::from_slice::<serde_json::Value>(&event.body) {
        Ok(json) => serde_json::to_string_pretty(&json)?,
        Err(_) => String::from_utf8_lossy(&event.body).into_owned(),
    };
    text += "\n";
    out.write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
