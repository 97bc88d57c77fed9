//! A TCP relay to the local PostgreSQL server that a test can cut and restore, to
//! play a database that goes away and comes back.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

pub struct Relay {
    pub port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on `port` (0: any free one) and relays every connection to 5432.
    pub async fn start(port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let connections = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(relay);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { port, tasks }
    }

    /// Closes every connection and stops listening: the database is gone.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// `url` with its port replaced by the relay's.
    pub fn url_through(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }
}
