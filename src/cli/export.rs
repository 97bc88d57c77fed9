//! `classhook export`: streams events or one kind of entity out as JSON lines or CSV,
//! in the same shape the API returns, for spreadsheets and warehouses.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde_json::Value;

use super::progress::Bar;
use crate::api::views::{EntityView, EventView};
use crate::config::Config;
use crate::mirror::kinds::{self, platform_for_request, resolve};
use crate::store::Progress;
use crate::store::{EntityFilter, EventFilter, Store};

/// Rows read from the store per round trip.
const PAGE: usize = 1000;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug, Args)]
#[command(group(
    // Exactly one of the two; a missing one is reported naming both.
    clap::ArgGroup::new("what").args(["kind", "events"]).required(true)
))]
pub struct ExportArgs {
    /// Export the mirrored entities of this kind (e.g. attendance, enrollment, payment).
    #[arg(long)]
    kind: Option<String>,
    /// Export the event log (newest first).
    #[arg(long)]
    events: bool,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Events received, or entities whose version is, at or after this time (RFC 3339,
    /// or a date for its midnight UTC).
    #[arg(long)]
    since: Option<String>,
    /// Only this source.
    #[arg(long)]
    source: Option<String>,
    /// Entities: include deleted ones (tombstones).
    #[arg(long)]
    include_deleted: bool,
}

pub async fn run(config: Config, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_for_reading(&config).await?;
    let since_ms = super::parse_time_flag("since", args.since.as_deref())?;
    let stdout = std::io::stdout().lock();
    let mut out = Output::new(args.format, stdout);
    let bar = match &args.kind {
        Some(_) => Bar::counter("exporting", "entities"),
        None => Bar::counter("exporting", "events"),
    };
    let exported = match &args.kind {
        Some(kind) => export_entities(&config, &store, &mut out, kind, args, since_ms, &bar).await,
        None => export_events(&store, &mut out, args, since_ms, &bar).await,
    };
    bar.finish();
    exported?;
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

async fn export_events(
    store: &Store,
    out: &mut Output<impl Write>,
    args: &ExportArgs,
    since_ms: Option<i64>,
    bar: &Bar,
) -> anyhow::Result<()> {
    out.header(
        &EVENT_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )?;
    let mut before_seq = None;
    loop {
        let page = store
            .list_events(EventFilter {
                source: args.source.clone(),
                since_ms,
                before_seq,
                limit: PAGE,
                ..EventFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before_seq = Some(last.seq);
        let full = page.len() == PAGE;
        bar.advanced(page.len() as u64);
        for event in page {
            let view = EventView::from(event);
            let json = serde_json::to_value(&view)?;
            out.row(&json, || event_csv_row(&view))?;
        }
        if !full {
            break;
        }
    }
    Ok(())
}

const EVENT_COLUMNS: [&str; 16] = [
    "id",
    "source",
    "provider",
    "tenant",
    "type",
    "event_id",
    "entity_kind",
    "entity_id",
    "entity_op",
    "version_ms",
    "received_at",
    "status",
    "status_reason",
    "times_seen",
    "conflicts",
    "mirror_effect",
];

fn event_csv_row(e: &EventView) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        e.id.to_string(),
        e.source.clone(),
        e.provider.clone(),
        opt(&e.tenant),
        e.event_type.clone(),
        opt(&e.event_id),
        e.entity.kind.clone(),
        opt(&e.entity.id),
        e.entity.op.clone(),
        e.version_ms.to_string(),
        e.received_at.clone(),
        e.status.clone(),
        opt(&e.status_reason),
        e.times_seen.to_string(),
        e.conflicts.to_string(),
        opt(&e.mirror_effect),
    ]
}

async fn export_entities(
    config: &Config,
    store: &Store,
    out: &mut Output<impl Write>,
    kind: &str,
    args: &ExportArgs,
    since_ms: Option<i64>,
    bar: &Bar,
) -> anyhow::Result<()> {
    // The kind means one platform's table, decided as in the API.
    let sources: Vec<_> = config
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.provider))
        .collect();
    let provider = platform_for_request(kind, args.source.as_deref(), &sources);
    // As the API: an unknown kind is an error, not an empty export.
    if !kinds::documented(kind) && !store.mirror_counts().await?.iter().any(|c| c.kind == kind) {
        bail!("no entity kind {kind:?}: neither documented nor in the mirror");
    }
    // Typed kinds get one CSV column per field; other kinds one `data` column of JSON.
    let fields: Vec<&str> = resolve(provider, kind)
        .map(|spec| spec.fields.iter().map(|f| f.path).collect())
        .unwrap_or_default();
    let mut columns: Vec<String> = [
        "kind",
        "source",
        "tenant",
        "id",
        "deleted",
        "version_ms",
        "event_id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if fields.is_empty() {
        columns.push("data".into());
    } else {
        columns.extend(fields.iter().map(|f| f.to_string()));
    }
    out.header(&columns)?;
    let mut after = None;
    loop {
        let page = store
            .list_entities(EntityFilter {
                kind: kind.to_string(),
                provider,
                source: args.source.clone(),
                include_deleted: args.include_deleted,
                since_version_ms: since_ms,
                after,
                limit: PAGE,
                ..EntityFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        let full = page.len() == PAGE;
        bar.advanced(page.len() as u64);
        for entity in page {
            let view = EntityView::from(entity);
            let json = serde_json::to_value(&view)?;
            out.row(&json, || entity_csv_row(&view, &fields))?;
        }
        if !full {
            break;
        }
    }
    Ok(())
}

fn entity_csv_row(e: &EntityView, fields: &[&str]) -> Vec<String> {
    let mut row = vec![
        e.kind.clone(),
        e.source.clone(),
        e.tenant.clone().unwrap_or_default(),
        e.id.clone(),
        e.deleted.to_string(),
        e.version_ms.to_string(),
        e.event_id.to_string(),
    ];
    if fields.is_empty() {
        row.push(if e.data.is_null() {
            String::new()
        } else {
            e.data.to_string()
        });
    } else {
        row.extend(
            fields
                .iter()
                .map(|path| cell(path.split('.').try_fold(&e.data, |v, part| v.get(part)))),
        );
    }
    row
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Writes JSON lines or CSV rows to `W`.
enum Output<W: Write> {
    Jsonl(W),
    Csv(Box<csv::Writer<W>>),
}

impl<W: Write> Output<W> {
    fn new(format: Format, writer: W) -> Self {
        match format {
            Format::Jsonl => Output::Jsonl(writer),
            Format::Csv => Output::Csv(Box::new(csv::Writer::from_writer(writer))),
        }
    }

    fn header(&mut self, columns: &[String]) -> anyhow::Result<()> {
        if let Output::Csv(w) = self {
            w.write_record(columns)?;
        }
        Ok(())
    }

    fn row(&mut self, json: &Value, csv_row: impl FnOnce() -> Vec<String>) -> anyhow::Result<()> {
        match self {
            Output::Jsonl(w) => {
                serde_json::to_writer(&mut *w, json)?;
                w.write_all(b"\n")?;
            }
            Output::Csv(w) => w.write_record(csv_row())?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::Jsonl(mut w) => w.flush()?,
            Output::Csv(mut w) => w.flush()?,
        }
        Ok(())
    }
}

/// Refuses nonsense combinations early.
pub fn check(args: &ExportArgs) -> anyhow::Result<()> {
    if args.include_deleted && args.events {
        bail!("--include-deleted applies to --kind only");
    }
    Ok(())
}
