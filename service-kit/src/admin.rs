//! The admin port: Prometheus `/metrics` on a listener of its own, apart
//! from the traffic port, so that it can be exposed to the scraper only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A scraper that has not sent its request headers by then is cut off.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scrape in progress may take to finish after `stop`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (typically out of file descriptors), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the admin port serves: the current metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` with `render`'s text until `stop` is cancelled,
/// then stops accepting and lets scrapes in progress finish.
pub async fn serve(listener: TcpListener, render: Render, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let render = Arc::clone(&render);
        let service = service_fn(move |request| answer(Arc::clone(&render), request));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(connection);
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("admin drain timed out");
    }
}

async fn answer(render: Render, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if request.method() == Method::GET && request.uri().path() == "/metrics" {
        *response.body_mut() = Full::new(Bytes::from(render()));
        let content_type = HeaderValue::from_static(crate::metrics::CONTENT_TYPE);
        response.headers_mut().insert(CONTENT_TYPE, content_type);
    } else {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(stream: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request sent");
        let mut buffer = vec![0; 4096];
        let read = stream.read(&mut buffer).await.expect("answer read");
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    }

    #[tokio::test]
    async fn serves_metrics_then_drains_a_kept_alive_connection_and_stops_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(|| "up 1\n".to_owned()), stop.clone()));
        let mut scraper = TcpStream::connect(addr).await.expect("connected");

        let metrics = get(&mut scraper, "/metrics").await;
        let missing = get(&mut scraper, "/other").await;
        stop.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;

        assert!(metrics.starts_with("HTTP/1.1 200") && metrics.ends_with("up 1\n"), "{metrics}");
        assert!(metrics.contains(crate::metrics::CONTENT_TYPE), "{metrics}");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(stopped.is_ok(), "the idle keep-alive connection did not hold up the stop");
        assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
        let mut rest = Vec::new();
        let closed = scraper.read_to_end(&mut rest).await;
        assert!(closed.is_ok_and(|read| read == 0), "the kept-alive connection was closed");
    }
}
