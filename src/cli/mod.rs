//! The command line: argument parsing here, one file per subcommand. Subcommands call
//! the library and print; they hold no rules of their own.

mod backup;
mod db;
mod deliveries;
mod event;
mod events;
mod export;
mod healthcheck;
mod migrate;
mod mirror;
mod progress;
mod rejections;
mod secrets;
mod send;
mod serve;
mod subscriptions;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_FILE, Secrets};
use crate::store::{Store, StoreError, StoreOptions};

#[derive(Debug, Parser)]
#[command(
    name = "classhook",
    version,
    about = "A webhook gateway for DreamClass and Loopwise"
)]
pub struct Cli {
    /// The configuration file (TOML). Every value can be overridden by CLASSHOOK_* variables.
    #[arg(long, global = true, env = "CLASSHOOK_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve,
    /// Work on the database itself (copy an SQLite store into PostgreSQL).
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Create or update the database's tables and exit (serve also does this at
    /// start); safe to run again.
    Migrate,
    /// Send a correctly signed sample event to a source (or any URL).
    Send(send::SendArgs),
    /// Check a captured request's signature against a secret.
    Verify(verify::VerifyArgs),
    /// List the latest stored events.
    Events(events::EventsArgs),
    /// Show one stored event in full.
    #[command(subcommand)]
    Event(event::EventCommand),
    /// List the latest refused requests and why.
    Rejections(rejections::RejectionsArgs),
    /// List, pause and resume subscriptions.
    #[command(subcommand)]
    Subscriptions(subscriptions::SubscriptionsCommand),
    /// List deliveries to subscribers (the dead-letter list with --dead).
    Deliveries(deliveries::DeliveriesArgs),
    /// Queue deliveries again: one, or a subscription's dead ones (--dead) or all (--all).
    Replay(deliveries::ReplayArgs),
    /// Work on the mirror of entities.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// Stream events or entities out as JSON lines or CSV.
    Export(export::ExportArgs),
    /// Print a new random key for CLASSHOOK_SECRET_KEY (base64 of 32 bytes).
    SecretKey,
    /// After losing the key: forget the subscription secrets it sealed (lists them without --yes).
    ForgetSecrets(secrets::ForgetArgs),
    /// Write a consistent copy of the database to a new file, while the gateway runs.
    Backup(backup::BackupArgs),
    /// Exit 0 when the gateway at the configured `listen` address answers `/healthz`
    /// (for container health checks).
    Healthcheck,
    /// Print a shell completion script, e.g. `classhook completions bash >
    /// /etc/bash_completion.d/classhook`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Serve the benchmark's ceiling: the same HTTP stack answering `{}` without work.
    #[command(hide = true)]
    NullServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

impl Cli {
    /// Loads the configuration named by `--config`, or `classhook.toml`, with its
    /// secrets: for the commands that receive or send.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        self.load(Secrets::Resolve)
    }

    /// Loads the configuration without looking up `*_env` secrets: for the commands
    /// that only read or re-queue what is stored.
    pub fn load_config_without_secrets(&self) -> anyhow::Result<Config> {
        self.load(Secrets::Skip)
    }

    /// Like [`Cli::load_config_without_secrets`], except that with no config file
    /// named and none in the working directory, a PostgreSQL URL in the environment
    /// (`CLASSHOOK_DATABASE_URL`) is enough: migrating needs nothing else, and a
    /// rolling upgrade migrates before any instance's config is in place.
    pub fn load_config_for_migrate(&self) -> anyhow::Result<Config> {
        if self.config.is_none()
            && !Path::new(DEFAULT_CONFIG_FILE).exists()
            && let Ok(config) = Config::from_environment(Secrets::Skip)
            && config.database_url.is_some()
        {
            return Ok(config);
        }
        self.load_config_without_secrets()
    }

    fn load(&self, secrets: Secrets) -> anyhow::Result<Config> {
        let file = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
        if !file.exists() {
            anyhow::bail!(
                "no config file {}: name one with --config FILE or CLASSHOOK_CONFIG (default: {DEFAULT_CONFIG_FILE} in the working directory; classhook.example.toml is a start)",
                file.display()
            );
        }
        Ok(Config::load_with(&file, secrets)?)
    }
}

/// Writes `value` as one line of JSON (the `--json` output of listing commands).
fn print_json_line(
    out: &mut impl std::io::Write,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Whether `error` comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `--provider` values.
fn parse_provider(text: &str) -> Result<crate::provider::ProviderKind, String> {
    crate::provider::ProviderKind::parse(text)
        .ok_or_else(|| format!("{text:?} is not dreamclass or loopwise"))
}

/// An optional time flag (RFC 3339 time or a date) as epoch milliseconds.
fn parse_time_flag(flag: &str, value: Option<&str>) -> anyhow::Result<Option<i64>> {
    value
        .map(|t| {
            crate::clock::parse_time(t).ok_or_else(|| {
                anyhow::anyhow!(
                    "--{flag} {t:?} is neither a date (2026-11-24) nor an RFC 3339 time (2026-11-24T09:40:02Z)"
                )
            })
        })
        .transpose()
}

/// Opens the configured data directory's database for reading.
async fn open_for_reading(config: &Config) -> anyhow::Result<Store> {
    match Store::open_read_only(&config.store_location()).await {
        Err(StoreError::NoDatabase(path)) => Err(no_database(config, &path)),
        other => Ok(other?),
    }
}

/// Opens the configured data directory's database to change it (re-queue, rebuild);
/// unlike `serve`, never creates one.
async fn open_existing(config: &Config) -> anyhow::Result<Store> {
    let options = StoreOptions {
        secrets: config.server.secret_keys.clone(),
        ..StoreOptions::default()
    };
    match Store::open_existing(&config.store_location(), options).await {
        Err(StoreError::NoDatabase(path)) => Err(no_database(config, &path)),
        other => Ok(other?),
    }
}

/// Says plainly that there is no database, where it was looked for and why there.
fn no_database(config: &Config, path: &Path) -> anyhow::Error {
    if let crate::store::Location::Postgres { .. } = config.store_location() {
        return anyhow::anyhow!(
            "the database {} holds no classhook tables yet: `classhook migrate --config {}` (or `serve`) creates them",
            config.store_location().shown(),
            config.file.display(),
        );
    }
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    anyhow::anyhow!(
        "there is no database at {} (data_dir of {}; a relative data_dir is taken from the config file's directory): `classhook serve --config {}` creates it on start",
        shown.display(),
        config.file.display(),
        config.file.display(),
    )
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Serve => serve::run(cli.load_config()?).await,
        Command::Db(command) => db::run(cli.load_config_without_secrets()?, command).await,
        Command::Migrate => migrate::run(cli.load_config_for_migrate()?).await,
        Command::Send(args) => send::run(&cli, args).await,
        Command::Verify(args) => verify::run(&cli, args),
        // These neither receive nor send: they do not need (or read) any secret.
        Command::Events(args) => events::run(cli.load_config_without_secrets()?, args).await,
        Command::Event(command) => event::run(cli.load_config_without_secrets()?, command).await,
        Command::Rejections(args) => {
            rejections::run(cli.load_config_without_secrets()?, args).await
        }
        Command::Subscriptions(command) => {
            let config = if command.needs_secrets() {
                cli.load_config()?
            } else {
                cli.load_config_without_secrets()?
            };
            subscriptions::run(config, command).await
        }
        Command::Backup(args) => backup::run(cli.load_config_without_secrets()?, args).await,
        Command::Healthcheck => healthcheck::run(cli.load_config_without_secrets()?).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "classhook", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries(args) => {
            deliveries::list(cli.load_config_without_secrets()?, args).await
        }
        Command::Replay(args) => deliveries::replay(cli.load_config_without_secrets()?, args).await,
        Command::Mirror(command) => mirror::run(cli.load_config_without_secrets()?, command).await,
        Command::Export(args) => {
            export::check(args)?;
            export::run(cli.load_config_without_secrets()?, args).await
        }
        Command::SecretKey => secrets::new_key(),
        // Needs the keys `serve` has (and so its environment).
        Command::ForgetSecrets(args) => secrets::forget(cli.load_config()?, args).await,
        Command::NullServer { listen } => serve::run_null(*listen).await,
    }
}
