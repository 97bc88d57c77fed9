//! `classhook deliveries` and `classhook replay`: the delivery queue and dead letters,
//! read and re-queued straight from the data directory (a running gateway picks
//! re-queued deliveries up on its next poll).

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::clock::{Clock, SystemClock, format_ms};
use crate::config::Config;
use crate::store::{DeliveryFilter, DeliveryState};

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// Only this subscription's deliveries.
    #[arg(long)]
    subscription: Option<String>,
    /// Only dead letters.
    #[arg(long)]
    dead: bool,
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Replay this one delivery.
    #[arg(
        long,
        conflicts_with = "subscription",
        required_unless_present = "subscription"
    )]
    delivery: Option<i64>,
    /// Replay this subscription's deliveries (with --dead: only its dead letters).
    #[arg(long)]
    subscription: Option<String>,
    #[arg(long, requires = "subscription")]
    dead: bool,
    /// Deliveries created at or after this RFC 3339 time.
    #[arg(long, requires = "subscription")]
    since: Option<String>,
    /// Deliveries created before this RFC 3339 time.
    #[arg(long, requires = "subscription")]
    until: Option<String>,
}

pub fn list(config: Config, args: &DeliveriesArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_for_reading(&config)?;
    let deliveries = store.list_deliveries(&DeliveryFilter {
        subscription: args.subscription.clone(),
        state: args.dead.then_some(DeliveryState::Dead),
        before_id: None,
        limit: args.limit,
    })?;
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
    let store = super::open_existing(&config)?;
    let now = SystemClock.now_ms();
    match (&args.delivery, &args.subscription) {
        (Some(id), _) => {
            store.replay_delivery(*id, now).await?;
            println!("delivery {id} queued again");
        }
        (None, Some(name)) => {
            let queued = store
                .replay_subscription(name, args.dead, since, until, now)
                .await?;
            println!("{queued} deliveries of {name} queued again");
        }
        (None, None) => bail!("say what to replay: --delivery ID or --subscription NAME"),
    }
    Ok(ExitCode::SUCCESS)
}
