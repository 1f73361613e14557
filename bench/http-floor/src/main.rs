//! A bare hyper 1.x HTTP/1.1 server shaped like the gateway's webhook route
//! with the work taken out: it reads the body, holds the request for a while
//! (as the gateway does while payments-svc commits) and answers with the
//! gateway's JSON. What it costs per request is the floor under the
//! gateway's CPU per event at the same request rate.
//!
//! Usage: `http-floor PORT HOLD_MICROSECONDS`; the worker threads come from
//! `TOKIO_WORKER_THREADS`, as in the services.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ANSWER: &str = r#"{"received":true,"outcome":"processed"}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3998);
    let hold = Duration::from_micros(args.next().and_then(|a| a.parse().ok()).unwrap_or(0));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, hold));
            let connection = hyper::server::conn::http1::Builder::new();
            let _ = connection.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(request: Request<Incoming>, hold: Duration) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read whole, as the gateway reads a webhook; what it says does not matter here.
    let _ = request.into_body().collect().await;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    let response = Response::builder().header("content-type", "application/json");
    Ok(response.body(Full::new(Bytes::from_static(ANSWER.as_bytes()))).expect("a valid response"))
}
