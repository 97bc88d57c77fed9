//! `classhook subscriptions list|pause|resume`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::api::views::SubscriptionView;
use crate::clock::{Clock, format_ms};
use crate::config::Config;
use crate::deliver::subscription::Subscription;

#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// List subscriptions with their state (paused, on hold, failing). Secrets are
    /// never shown.
    List {
        /// One JSON object per line (as the API's `/api/v1/subscriptions` items).
        #[arg(long)]
        json: bool,
    },
    /// Stop sending to a subscription; its deliveries wait (config ones too).
    Pause(PauseArgs),
    /// Send again; clears a hold after repeated failures.
    Resume {
        /// The subscription's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The subscription's name.
    name: String,
    /// Why, shown with the subscription.
    #[arg(long)]
    reason: Option<String>,
}

pub async fn run(config: Config, command: &SubscriptionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SubscriptionsCommand::List { json } => {
            let store = super::open_for_reading(&config).await?;
            list(store.list_subscriptions().await?, *json)
        }
        SubscriptionsCommand::Pause(args) => {
            let store = super::open_existing(&config).await?;
            let paused = store
                .set_paused(&args.name, true, args.reason.clone())
                .await?;
            println!("{} paused", paused.spec.name);
            Ok(ExitCode::SUCCESS)
        }
        SubscriptionsCommand::Resume { name } => {
            let store = super::open_existing(&config).await?;
            let resumed = store.set_paused(name, false, None).await?;
            println!("{} resumed", resumed.spec.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(subscriptions: Vec<Subscription>, json: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if json {
        for s in subscriptions {
            super::print_json_line(&mut out, &SubscriptionView::from(s))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<20}  {:<7}  {:<28}  {:>8}  url",
        "name", "managed", "state", "failures"
    )?;
    let now_ms = crate::clock::SystemClock.now_ms();
    for s in subscriptions {
        let state = if s.paused {
            match &s.paused_reason {
                Some(reason) => format!("paused: {reason}"),
                None => "paused".to_string(),
            }
        } else if s.hold_until_ms > now_ms {
            format!("on hold until {}", format_ms(s.hold_until_ms))
        } else {
            "active".to_string()
        };
        writeln!(
            out,
            "{:<20}  {:<7}  {:<28}  {:>8}  {}",
            s.spec.name,
            s.managed_by.as_str(),
            state,
            s.consecutive_failures,
            s.spec.url
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
