//! Runs the real `classhook` binary as a child process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_classhook"))
}

/// Writes a config whose data lives in `dir/data` and whose port is chosen by the OS.
pub fn write_config(dir: &Path, sources: &str) -> PathBuf {
    let file = dir.join("classhook.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n{}\n{sources}",
        dir.join("data").display().to_string(),
        super::backend::database_section(dir)
    );
    std::fs::write(&file, text).unwrap();
    file
}

pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
}

/// Starts `classhook serve` and waits (bounded) for its start line.
pub async fn serve(config: &Path) -> Served {
    serve_logged(config).await.0
}

/// Like [`serve`], and keeps every log line the gateway writes, from the start.
pub async fn serve_logged(config: &Path) -> (Served, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("CLASSHOOK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("classhook serve exited before listening");
    })
    .await
    .expect("classhook serve did not start within 20 s");
    // Keep draining stderr so the child never blocks on a full pipe.
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    (Served { child, addr }, log)
}

/// Runs a CLI command to completion: (exit code, stdout, stderr).
pub async fn run(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("CLASSHOOK_CONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
    }
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the command finished within 30 s")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Where the gateway a config file describes keeps its data.
pub fn location_of(config: &Path) -> classhook::store::Location {
    classhook::config::Config::load_with(config, classhook::config::Secrets::Skip)
        .unwrap()
        .store_location()
}
