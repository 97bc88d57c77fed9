//! `classhook healthcheck`: asks the running gateway's `/healthz`, for container
//! health checks and service managers (the runtime image has no curl).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let listen = config.server.listen;
    // A gateway listening on every address answers on loopback too.
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}/healthz", SocketAddr::new(ip, listen.port()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()?;
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(response) => {
            eprintln!("{url} answered {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("{url}: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
