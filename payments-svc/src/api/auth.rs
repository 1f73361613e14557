//! Who may call payments-svc: holders of the shared bearer token. Health
//! checks stay open so load balancers and orchestrators can probe.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <PAYMENTS_GRPC_TOKEN>` on every call, in
/// constant time. Without a configured token every call passes; the service
/// then only listens on loopback (see `startup`).
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireToken").field("configured", &self.expected.is_some()).finish()
    }
}

impl RequireToken {
    pub fn new(token: Option<&str>) -> Self {
        Self { expected: token.map(|t| Arc::from(format!("Bearer {t}").into_bytes())) }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let presented = request.metadata().get("authorization").map(|v| v.as_bytes());
        let reason = match presented {
            None => "missing token",
            Some(presented) if bool::from(presented.ct_eq(expected)) => return Ok(request),
            Some(_) => "wrong token",
        };
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(reason, peer, "gRPC call refused: unauthenticated");
        Err(Status::unauthenticated("a valid bearer token is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(interceptor: &mut RequireToken, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request.metadata_mut().insert("authorization", header.parse().expect("ASCII"));
        }
        interceptor.call(request).map(drop).map_err(|status| status.code())
    }

    #[test]
    fn only_the_configured_token_passes() {
        let mut auth = RequireToken::new(Some("t0k3n"));
        assert_eq!(call(&mut auth, Some("Bearer t0k3n")), Ok(()));
        assert_eq!(call(&mut auth, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut auth, Some("Bearer t0k3")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut auth, Some("t0k3n")), Err(tonic::Code::Unauthenticated));
    }

    #[test]
    fn without_a_token_every_call_passes() {
        assert_eq!(call(&mut RequireToken::new(None), None), Ok(()));
    }
}
