//! `classhook verify`: does a captured request's signature hold under a secret, and
//! for DreamClass, under which key encoding? This settles the platform's ambiguous
//! "Key Encoding: Base64" for a given account.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use clap::Args;

use super::Cli;
use crate::config::{self, SecretEncoding};
use crate::provider::{Envelope, ProviderKind};
use crate::secret::Secret;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The captured body; `-` or absent reads standard input.
    #[arg(long)]
    body: Option<PathBuf>,
    /// A captured header, `Name: value` (repeatable; Loopwise's signature is a header).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// dreamclass or loopwise (not needed with --source).
    #[arg(long, value_parser = super::parse_provider)]
    provider: Option<ProviderKind>,
    /// The secret to check against (or use --source to take it from the config).
    #[arg(long, env = "CLASSHOOK_VERIFY_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Take provider and secret from this configured source.
    #[arg(long, conflicts_with_all = ["secret", "provider"])]
    source: Option<String>,
}

pub fn run(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let (provider, secret) = secret_to_check(cli, args)?;
    let body = read_body(args.body.as_ref())?;
    let headers = parse_headers(&args.headers)?;
    let envelope = Envelope::parse(provider, &body).context("the body is not a usable envelope")?;
    let encodings: &[SecretEncoding] = match provider {
        ProviderKind::DreamClass => &[SecretEncoding::Utf8, SecretEncoding::Base64],
        ProviderKind::Loopwise => &[SecretEncoding::Utf8],
    };
    let mut holds = Vec::new();
    for &encoding in encodings {
        match config::signing_key(provider, Some(&secret), encoding) {
            Ok(Some(key)) => match envelope.verify(&key, &headers, &body) {
                Ok(()) => holds.push(encoding),
                Err(why) => println!("{}: does not hold ({why})", describe(provider, encoding)),
            },
            Ok(None) => unreachable!("a secret was given"),
            Err(why) => println!("{}: not tried ({why})", describe(provider, encoding)),
        }
    }
    if let Some(encoding) = holds.first() {
        println!("{}: signature HOLDS", describe(provider, *encoding));
        if provider == ProviderKind::DreamClass {
            println!(
                "configure this source with secret_encoding = \"{}\"",
                encoding.as_str()
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        println!("the signature does not hold under this secret");
        if let Some(encoding) = holds_without_trailing_newline(provider, &secret, &headers, &body) {
            println!(
                "but it HOLDS for the body without its trailing newline ({}): the file was \
                 probably saved with a newline the platform did not send (an editor or `echo` \
                 adds one); capture the body byte for byte, e.g. `printf %s`, or remove the \
                 newline",
                describe(provider, encoding)
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Whether the signature holds once the body's trailing line breaks are removed, and
/// under which encoding: a body saved from a terminal or an editor often gains one.
fn holds_without_trailing_newline(
    provider: ProviderKind,
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<SecretEncoding> {
    let trimmed = body.trim_ascii_end();
    if trimmed.len() == body.len() || !body[trimmed.len()..].contains(&b'\n') {
        return None;
    }
    let envelope = Envelope::parse(provider, trimmed).ok()?;
    [SecretEncoding::Utf8, SecretEncoding::Base64]
        .into_iter()
        .find(|&encoding| {
            matches!(config::signing_key(provider, Some(secret), encoding), Ok(Some(key))
                if envelope.verify(&key, headers, trimmed).is_ok())
        })
}

fn describe(provider: ProviderKind, encoding: SecretEncoding) -> String {
    match (provider, encoding) {
        (ProviderKind::DreamClass, SecretEncoding::Utf8) => {
            "secret as UTF-8 bytes (secret_encoding = \"utf8\")".into()
        }
        (ProviderKind::DreamClass, SecretEncoding::Base64) => {
            "secret base64-decoded to key bytes (secret_encoding = \"base64\")".into()
        }
        (ProviderKind::Loopwise, _) => "Loopwise signature header over the raw body".into(),
    }
}

fn secret_to_check(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<(ProviderKind, Secret)> {
    if let Some(name) = &args.source {
        let config = cli.load_config()?;
        let source = config
            .source(name)
            .with_context(|| format!("no source {name:?} in {}", config.file.display()))?;
        let secret = source.secret.clone().with_context(|| {
            format!("source {name:?} has no secret: it accepts unsigned requests")
        })?;
        return Ok((source.provider, secret));
    }
    let provider = args
        .provider
        .context("say which platform signed the request: --provider dreamclass|loopwise")?;
    let secret = args
        .secret
        .clone()
        .context("give the secret to check: --secret (or CLASSHOOK_VERIFY_SECRET)")?;
    Ok((provider, Secret::new(secret)))
}

fn read_body(path: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    match path {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        }
        _ => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body)?;
            Ok(body)
        }
    }
}

fn parse_headers(lines: &[String]) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("--header {line:?} must be `Name: value`"))?;
        headers.append(
            HeaderName::try_from(name.trim())
                .with_context(|| format!("bad header name {name:?}"))?,
            HeaderValue::try_from(value.trim())
                .with_context(|| format!("bad header value in {line:?}"))?,
        );
    }
    Ok(headers)
}
