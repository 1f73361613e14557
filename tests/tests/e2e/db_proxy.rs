//! A TCP proxy in front of PostgreSQL that a test takes down (every
//! connection closed, new ones refused, as when the server crashes) and
//! brings back on the same address, the way a database restarts behind
//! its unchanged host name, or points at another server, the way a managed
//! database's name moves to its promoted standby. It can also fall silent
//! without closing anything, as a host that vanished leaves its peers'
//! connections half-open.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug)]
pub struct DbProxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<String>>,
    /// The task accepting connections while up; it owns every relay, so
    /// aborting it closes them all.
    serving: Mutex<Option<JoinHandle<()>>>,
    /// Set while the proxy black-holes: relays stop passing bytes.
    silent: watch::Sender<bool>,
    /// Both ends of every black-holed connection, kept open (never read,
    /// never written) until the proxy is dropped.
    parked: Arc<Mutex<Vec<TcpStream>>>,
}

impl DbProxy {
    /// A proxy to the server of `database_url` (host and port), up.
    pub async fn start(database_url: &str) -> Self {
        let url = url::Url::parse(database_url).expect("a database URL");
        let upstream = format!("{}:{}", url.host_str().expect("a host"), url.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Self {
            addr,
            upstream: Arc::new(Mutex::new(upstream)),
            serving: Mutex::new(None),
            silent: watch::Sender::new(false),
            parked: Arc::default(),
        };
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

    /// Stops passing bytes either way on every connection, open or new,
    /// without closing or resetting any: each side's kernel still takes
    /// what is sent, and nothing ever answers.
    pub fn black_hole(&self) {
        self.silent.send_replace(true);
    }

    /// Closes every connection that is not black-holed and sends new ones
    /// to `upstream` (`host:port`) instead; black-holed ones stay open and
    /// silent.
    pub async fn switch_to(&self, upstream: String) {
        let serving = self.serving.lock().expect("proxy state").take();
        if let Some(serving) = serving {
            serving.abort();
            // Its listener is closed once the task has stopped.
            let _ = serving.await;
        }
        *self.upstream.lock().expect("proxy state") = upstream;
        self.silent.send_replace(false);
        self.up().await;
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = Arc::clone(&self.upstream);
        let (silent, parked) = (self.silent.subscribe(), Arc::clone(&self.parked));
        let serving = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.lock().expect("proxy state").clone();
                relays.spawn(relay(client, upstream, silent.clone(), Arc::clone(&parked)));
            }
        });
        *self.serving.lock().expect("proxy state") = Some(serving);
    }
}

/// Passes bytes between `client` and `upstream` until either closes, or
/// until the proxy falls silent: then both sockets are parked.
async fn relay(
    mut client: TcpStream,
    upstream: String,
    mut silent: watch::Receiver<bool>,
    parked: Arc<Mutex<Vec<TcpStream>>>,
) {
    if *silent.borrow_and_update() {
        parked.lock().expect("parked sockets").push(client);
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
    let silenced = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = silent.wait_for(|silent| *silent) => true,
    };
    if silenced {
        parked.lock().expect("parked sockets").extend([client, server]);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.down();
    }
}
