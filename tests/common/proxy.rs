//! A real HTTP "proxy" on loopback that records the request line of everything it
//! gets (a client using an HTTP proxy sends `POST http://host/path HTTP/1.1`, or
//! `CONNECT host:443` for HTTPS) and answers 200 itself, forwarding nothing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
pub struct RecordingProxy {
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    pub async fn start() -> RecordingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let recorded = lines.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let line = text.lines().next().unwrap_or_default().to_string();
                    recorded.lock().unwrap().push(line);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nproxied")
                        .await;
                });
            }
        });
        RecordingProxy { addr, lines }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}
