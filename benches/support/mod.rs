//! What the benchmarks share: knobs from the environment, and starting the release
//! `classhook` binary as a child process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A numeric knob from the environment.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `binary` with `args`, waits (bounded) for its "listening on" line, and keeps
/// draining its log, passing on anything that is not routine.
pub async fn spawn(binary: &str, args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(binary)
        .args(args)
        .env("CLASSHOOK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the server starts within 60 s")
            .unwrap()
            .expect("the server printed its address");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.contains(" INFO ") {
                eprintln!("server: {line}");
            }
        }
    });
    (child, addr)
}
