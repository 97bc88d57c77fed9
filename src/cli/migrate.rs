//! `classhook migrate`: brings the database's schema up to date and exits (`serve`
//! does the same at start). Safe to run again, and beside running instances.

use std::process::ExitCode;

use crate::config::Config;
use crate::store::Store;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let location = config.store_location();
    Store::migrate(&location).await?;
    println!("the database at {} is up to date", location.shown());
    Ok(ExitCode::SUCCESS)
}
