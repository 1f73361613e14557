//! A TCP proxy in front of PostgreSQL that a test takes down (every
//! connection closed, new ones refused, as when the server crashes) and
//! brings back on the same address, the way a database restarts behind
//! its unchanged host name, or points at another server, the way a managed
//! database's name moves to its promoted standby.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug)]
pub struct DbProxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<String>>,
    /// The task accepting connections while up; it owns every relay, so
    /// aborting it closes them all.
    serving: Mutex<Option<JoinHandle<()>>>,
}

impl DbProxy {
    /// A proxy to the server of `database_url` (host and port), up.
    pub async fn start(database_url: &str) -> Self {
        let url = url::Url::parse(database_url).expect("a database URL");
        let upstream = format!("{}:{}", url.host_str().expect("a host"), url.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Self { addr, upstream: Arc::new(Mutex::new(upstream)), serving: Mutex::new(None) };
        proxy.serve(listener);
        proxy
    }

    /// `database_url` with the proxy in place of its server.
    pub fn url(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("a database URL");
        url.set_ip_host(self.addr.ip()).expect("a host");
        url.set_port(Some(self.addr.port())).expect("a port");
        url.to_string()
    }

    /// Closes every connection and refuses new ones.
    pub fn down(&self) {
        if let Some(serving) = self.serving.lock().expect("proxy state").take() {
            serving.abort();
        }
    }

    /// Accepts connections again, on the same address.
    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("proxy binds again");
        self.serve(listener);
    }

    /// Closes every connection and sends new ones to `upstream`
    /// (`host:port`) instead.
    pub async fn switch_to(&self, upstream: String) {
        let serving = self.serving.lock().expect("proxy state").take();
        if let Some(serving) = serving {
            serving.abort();
            // Its listener is closed once the task has stopped.
            let _ = serving.await;
        }
        *self.upstream.lock().expect("proxy state") = upstream;
        self.up().await;
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = Arc::clone(&self.upstream);
        let serving = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.lock().expect("proxy state").clone();
                relays.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        *self.serving.lock().expect("proxy state") = Some(serving);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.down();
    }
}
