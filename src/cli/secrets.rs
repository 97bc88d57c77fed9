//! `classhook secret-key` and `classhook forget-secrets`: the key subscription
//! secrets are sealed under, and what to do when it is lost.

use std::process::ExitCode;

use clap::Args;

use crate::config::Config;
use crate::store::sealed::{Sealer, SecretKey};
use crate::store::{Store, StoreError, StoreOptions};

/// Prints a fresh key: only the key on stdout, so that `$(classhook secret-key)`
/// takes it.
pub fn new_key() -> anyhow::Result<ExitCode> {
    println!("{}", SecretKey::generate().to_base64());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Forget them; without it, only list what would be forgotten.
    #[arg(long)]
    yes: bool,
}

/// Clears the subscription secrets the configured keys cannot open.
pub async fn forget(config: Config, args: &ForgetArgs) -> anyhow::Result<ExitCode> {
    // Opened withheld: the store's own reads must not fail on the very values this
    // command is for; they are judged with the configured keys instead.
    let options = StoreOptions {
        secrets: Sealer::withheld(),
        ..StoreOptions::default()
    };
    let store = match Store::open_existing(&config.store_location(), options).await {
        Err(StoreError::NoDatabase(path)) => return Err(super::no_database(&config, &path)),
        other => other?,
    };
    let keys = config.server.secret_keys.clone();
    let unreadable = store.forget_unreadable_secrets(keys, !args.yes).await?;
    if unreadable.is_empty() {
        println!("every stored subscription secret opens with the keys given: nothing to forget");
        return Ok(ExitCode::SUCCESS);
    }
    for found in &unreadable {
        let then = if found.from_config {
            "the next `classhook serve` stores them again from the config"
        } else {
            "it is paused: set secret and basic_auth again (PATCH /api/v1/subscriptions/NAME), then resume it"
        };
        println!("{}: {}; {then}", found.subscription, found.reason);
    }
    if args.yes {
        println!("forgot the secrets of {} subscriptions", unreadable.len());
    } else {
        println!(
            "nothing was changed: check that the key is really lost (the message names the key needed), then run again with --yes"
        );
    }
    Ok(ExitCode::SUCCESS)
}
