//! `classhook subscriptions list|pause|resume|rotate-secret`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::api::views::SubscriptionView;
use crate::clock::{Clock, format_ms};
use crate::config::Config;
use crate::deliver::ordering::Ordering;
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
    /// Make a new signing key; the replaced one keeps signing beside it for the
    /// grace period. A new HMAC secret is generated and printed once; an ed25519
    /// subscription gets a new key pair and its public key is printed. Needs the
    /// keys `serve` has (CLASSHOOK_SECRET_KEY).
    RotateSecret(RotateArgs),
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The subscription's name.
    name: String,
    /// How long the replaced key keeps signing (`24h` by default, `0s` ends it at
    /// once, at most 7 days).
    #[arg(long, default_value = "24h")]
    grace_period: String,
    /// Switch to this scheme with the rotation (`hmac` or `ed25519`).
    #[arg(long)]
    signing: Option<String>,
}

impl SubscriptionsCommand {
    /// Whether the command opens stored secrets (and so needs the secret keys).
    pub fn needs_secrets(&self) -> bool {
        matches!(self, SubscriptionsCommand::RotateSecret(_))
    }
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
        SubscriptionsCommand::RotateSecret(args) => rotate(&config, args).await,
    }
}

async fn rotate(config: &Config, args: &RotateArgs) -> anyhow::Result<ExitCode> {
    let input = crate::api::RotateInput {
        secret: None,
        grace_period: Some(args.grace_period.clone()),
        signing: args.signing.clone(),
    };
    let now_ms = crate::clock::SystemClock.now_ms();
    let request = crate::api::rotation_request(input, now_ms, "command line".into())
        .map_err(|m| anyhow::anyhow!(m.replace("`grace_period`", "--grace-period")))?;
    let store = super::open_existing(config).await?;
    let (rotated, generated) = crate::api::rotate(&store, &args.name, request).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: signing key rotated", rotated.spec.name)?;
    if let Some(secret) = generated {
        writeln!(
            out,
            "new secret (shown once; give it to the receiver): {}",
            secret.expose()
        )?;
    }
    if let Some(public_key) = &rotated.public_key {
        writeln!(out, "public key: {public_key}")?;
    }
    for previous in &rotated.previous_keys {
        writeln!(
            out,
            "a replaced key still signs until {}",
            format_ms(previous.expires_at_ms)
        )?;
    }
    Ok(ExitCode::SUCCESS)
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
        "{:<20}  {:<7}  {:<28}  {:>8}  {:<7}  url",
        "name", "managed", "state", "failures", "signing"
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
            "{:<20}  {:<7}  {:<28}  {:>8}  {:<7}  {}",
            s.spec.name,
            s.managed_by.as_str(),
            state,
            s.consecutive_failures,
            s.spec.signing.as_str(),
            s.spec.url
        )?;
        if let Some(public_key) = &s.public_key {
            writeln!(out, "{:<20}  public key {public_key}", "")?;
        }
        if let Some(limit) = s.spec.rate_limit {
            writeln!(out, "{:<20}  rate limit {limit}", "")?;
        }
        if s.spec.ordering == Ordering::Entity {
            writeln!(out, "{:<20}  one at a time per entity, in stored order", "")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
