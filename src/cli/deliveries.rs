//! `classhook deliveries` and `classhook replay`: the delivery queue and dead letters,
//! read and re-queued straight from the data directory (a running gateway picks
//! re-queued deliveries up on its next poll).

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::api::views::DeliveryView;
use crate::clock::{Clock, SystemClock, format_ms};
use crate::config::Config;
use crate::store::{DeliveryFilter, DeliveryId, DeliveryState, Store};

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// Only this subscription's deliveries.
    #[arg(long)]
    subscription: Option<String>,
    /// Only dead letters.
    #[arg(long)]
    dead: bool,
    /// How many to show.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON object per line (as the API's `/api/v1/deliveries` items).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("which").args(["dead", "all"]).multiple(false)),
    // Exactly one target; a missing one is reported naming both.
    group(clap::ArgGroup::new("target").args(["delivery", "subscription"]).required(true))
)]
pub struct ReplayArgs {
    /// Replay this one delivery.
    #[arg(long)]
    delivery: Option<DeliveryId>,
    /// Replay this subscription's deliveries: its dead letters (--dead) or every one
    /// of them (--all).
    #[arg(long, requires = "which")]
    subscription: Option<String>,
    /// With --subscription: only its dead letters (deliveries that used up their
    /// retries), queued again with a fresh retry schedule.
    #[arg(long, requires = "subscription")]
    dead: bool,
    /// With --subscription: every delivery, including those already delivered
    /// (the receiver gets them again, with the same webhook-id).
    #[arg(long, requires = "subscription")]
    all: bool,
    /// With --subscription: print what would be queued again, change nothing.
    #[arg(long, requires = "subscription")]
    dry_run: bool,
    /// Deliveries created at or after this RFC 3339 time.
    #[arg(long, requires = "subscription")]
    since: Option<String>,
    /// Deliveries created before this RFC 3339 time.
    #[arg(long, requires = "subscription")]
    until: Option<String>,
}

pub async fn list(config: Config, args: &DeliveriesArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_for_reading(&config).await?;
    if let Some(name) = &args.subscription
        && store.get_subscription(name).await?.is_none()
    {
        bail!("no subscription named {name:?}");
    }
    let deliveries = store
        .list_deliveries(DeliveryFilter {
            event: None,
            subscription: args.subscription.clone(),
            state: args.dead.then_some(DeliveryState::Dead),
            before_id: None,
            limit: args.limit,
        })
        .await?;
    if args.json {
        let mut out = std::io::stdout().lock();
        for d in deliveries {
            super::print_json_line(&mut out, &DeliveryView::from(d))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<16}  {:>6}  {:<9}  {:>8}  {:<24}  last error",
        "id", "subscription", "event", "state", "attempts", "next / delivered"
    );
    for d in deliveries {
        let when = match d.state {
            DeliveryState::Pending => format_ms(d.next_attempt_at_ms),
            DeliveryState::Delivered => d.delivered_at_ms.map(format_ms).unwrap_or_default(),
            DeliveryState::Dead => String::new(),
        };
        println!(
            "{:>6}  {:<16}  {:>6}  {:<9}  {:>8}  {:<24}  {}",
            d.id,
            d.subscription,
            d.event_seq,
            d.state.as_str(),
            d.attempts,
            when,
            d.last_error.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(config: Config, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let since = super::parse_time_flag("since", args.since.as_deref())?;
    let until = super::parse_time_flag("until", args.until.as_deref())?;
    if let (true, Some(name)) = (args.dry_run, &args.subscription) {
        let store = super::open_for_reading(&config).await?;
        return dry_run(&store, name, args.dead, since, until).await;
    }
    let store = super::open_existing(&config).await?;
    let now = SystemClock.now_ms();
    match (&args.delivery, &args.subscription) {
        (Some(id), _) => {
            store.replay_delivery(*id, now).await?;
            println!("delivery {id} queued again");
        }
        (None, Some(name)) => {
            let bar = super::progress::Bar::spinner(&format!("queueing deliveries of {name}"));
            let queued = store
                .replay_subscription(name, args.dead, since, until, now)
                .await;
            bar.finish();
            let queued = queued?;
            println!("{queued} deliveries of {name} queued again");
        }
        (None, None) => bail!("say what to replay: --delivery ID or --subscription NAME"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists the deliveries `replay --subscription` would queue again, and changes nothing.
async fn dry_run(
    store: &Store,
    name: &str,
    dead_only: bool,
    since: Option<i64>,
    until: Option<i64>,
) -> anyhow::Result<ExitCode> {
    if store.get_subscription(name).await?.is_none() {
        bail!("no subscription named {name:?}");
    }
    let mut before_id = None;
    let mut chosen = Vec::new();
    loop {
        let page = store
            .list_deliveries(DeliveryFilter {
                event: None,
                subscription: Some(name.to_string()),
                state: dead_only.then_some(DeliveryState::Dead),
                before_id,
                limit: 1000,
            })
            .await?;
        let Some(last) = page.last() else { break };
        before_id = Some(last.id);
        let full = page.len() == 1000;
        chosen.extend(page.into_iter().filter(|d| {
            since.is_none_or(|t| d.created_at_ms >= t) && until.is_none_or(|t| d.created_at_ms < t)
        }));
        if !full {
            break;
        }
    }
    println!(
        "{:>6}  {:>6}  {:<9}  {:>8}",
        "id", "event", "state", "attempts"
    );
    for d in &chosen {
        println!(
            "{:>6}  {:>6}  {:<9}  {:>8}",
            d.id,
            d.event_seq,
            d.state.as_str(),
            d.attempts
        );
    }
    let delivered = chosen
        .iter()
        .filter(|d| d.state == DeliveryState::Delivered)
        .count();
    println!(
        "dry run: {} deliveries of {name} would be queued again ({delivered} of them already delivered), less any being sent right now; nothing was changed",
        chosen.len()
    );
    Ok(ExitCode::SUCCESS)
}
