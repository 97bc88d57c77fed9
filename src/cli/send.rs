//! `classhook send`: build a correctly signed, realistic event and POST it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use clap::Args;

use super::Cli;
use crate::config::{self, SecretEncoding};
use crate::provider::ProviderKind;
use crate::provider::sample::{self, SignedRequest};
use crate::secret::Secret;

#[derive(Debug, Args)]
pub struct SendArgs {
    /// A source from the config: its URL, provider, secret and Basic Auth are used.
    #[arg(long, conflicts_with = "url")]
    source: Option<String>,
    /// Send to this URL instead of a configured source (needs --provider).
    #[arg(long, requires = "provider")]
    url: Option<String>,
    /// With --url: dreamclass or loopwise.
    #[arg(long, value_parser = super::parse_provider)]
    provider: Option<ProviderKind>,
    /// With --url: the HMAC secret (leave out to send unsigned).
    #[arg(long, env = "CLASSHOOK_SEND_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// With --url: how a DreamClass secret becomes key bytes.
    #[arg(long, value_parser = parse_encoding, default_value = "utf8")]
    secret_encoding: SecretEncoding,
    /// With --url: Basic Auth as USER:PASSWORD.
    #[arg(long, env = "CLASSHOOK_SEND_BASIC_AUTH", hide_env_values = true)]
    basic_auth: Option<String>,
    /// The event type, e.g. CLASS_CREATED or course.student_enroll.
    #[arg(long = "event")]
    event_type: String,
    /// A JSON file with your own `data` instead of the sample.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The entity the sample is about (its `data.id`), e.g. to send CLASS_UPDATED for
    /// the class an earlier CLASS_CREATED made (`classhook events` and the API show
    /// entity ids). Without it each sample gets a random id.
    #[arg(long, conflicts_with = "data")]
    entity_id: Option<String>,
    /// The DreamClass tenant to send as.
    #[arg(long, default_value = "my-school")]
    tenant: String,
    /// Print the request instead of sending it.
    #[arg(long)]
    print: bool,
}

fn parse_encoding(text: &str) -> Result<SecretEncoding, String> {
    match text {
        "utf8" => Ok(SecretEncoding::Utf8),
        "base64" => Ok(SecretEncoding::Base64),
        _ => Err(format!("{text:?} is not utf8 or base64")),
    }
}

/// Where and how to send.
struct Target {
    url: String,
    provider: ProviderKind,
    key: Option<crate::secret::KeyBytes>,
    basic_auth: Option<(String, String)>,
}

pub async fn run(cli: &Cli, args: &SendArgs) -> anyhow::Result<ExitCode> {
    let target = target(cli, args)?;
    let data = match &args.data {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?
        }
        None => {
            let mut data = sample::sample_data(
                target.provider,
                &args.event_type,
                rand::random::<u32>() as u64,
            );
            if let (Some(id), Some(object)) = (&args.entity_id, data.as_object_mut()) {
                // DreamClass ids are numbers; Loopwise ids are strings.
                let id = match (target.provider, id.parse::<i64>()) {
                    (ProviderKind::DreamClass, Ok(n)) => serde_json::Value::from(n),
                    _ => serde_json::Value::from(id.as_str()),
                };
                object.insert("id".into(), id);
            }
            data
        }
    };
    if !target.provider.known_types().contains(&args.event_type) {
        eprintln!(
            "warning: {:?} is not a documented {} event type: the gateway will store it with status unknown_type (kept, mirrored only as a kind of its own, never changing a documented entity)",
            args.event_type, target.provider
        );
    }
    let request = sample::build_request(
        target.provider,
        target.key.as_ref(),
        &args.event_type,
        data,
        &args.tenant,
    );
    if args.print {
        print_request(&target, &request);
        return Ok(ExitCode::SUCCESS);
    }
    let mut builder = reqwest::Client::new().post(&target.url).body(request.body);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if let Some((user, password)) = &target.basic_auth {
        builder = builder.basic_auth(user, Some(password));
    }
    let response = builder.send().await.map_err(|e| {
        if e.is_connect() {
            anyhow::anyhow!(
                "could not connect to {}: is `classhook serve` running at that address? ({e})",
                target.url
            )
        } else {
            anyhow::Error::new(e).context(format!("could not POST to {}", target.url))
        }
    })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn target(cli: &Cli, args: &SendArgs) -> anyhow::Result<Target> {
    if let Some(url) = &args.url {
        let provider = args.provider.expect("clap requires --provider with --url");
        let secret = args.secret.clone().map(Secret::new);
        let key = config::signing_key(provider, secret.as_ref(), args.secret_encoding)
            .map_err(|m| anyhow::anyhow!("--secret: {m}"))?;
        let basic_auth = match &args.basic_auth {
            Some(pair) => {
                let (user, password) = pair
                    .split_once(':')
                    .context("--basic-auth must be USER:PASSWORD")?;
                Some((user.to_string(), password.to_string()))
            }
            None => None,
        };
        return Ok(Target {
            url: url.clone(),
            provider,
            key,
            basic_auth,
        });
    }
    let Some(name) = &args.source else {
        bail!("say where to send: --source NAME (from the config) or --url URL --provider P");
    };
    let config = cli.load_config()?;
    let Some(source) = config.source(name) else {
        let known: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no source {name:?} in {}; configured: {}",
            config.file.display(),
            known.join(", ")
        );
    };
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(Target {
        url: format!("http://{addr}/hooks/{}", source.name),
        provider: source.provider,
        key: source.signing_key.clone(),
        basic_auth: source
            .basic_auth
            .as_ref()
            .map(|a| (a.username.clone(), a.password.expose().to_string())),
    })
}

fn print_request(target: &Target, request: &SignedRequest) {
    println!("POST {}", target.url);
    for (name, value) in &request.headers {
        println!("{name}: {value}");
    }
    if let Some((user, password)) = &target.basic_auth {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        println!("authorization: Basic {encoded}");
    }
    println!();
    println!("{}", String::from_utf8_lossy(&request.body));
}
