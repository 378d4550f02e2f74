//! A tower layer timing every client-facing gRPC request by method and status
//! code (`inflight_grpc_request_duration_seconds`). Peer traffic is left out:
//! it is measured as round trips per peer instead.
//!
//! The code comes from the `grpc-status` response header, where tonic puts it
//! for errors; an answer without one is OK (its status travels in trailers).
//! Method names are taken only from this server's own services, so garbage
//! paths cannot blow up the label set.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};

use crate::metrics::METRICS;

const METHODS: &[&str] = &[
    "Insert",
    "Update",
    "Get",
    "Scan",
    "Delete",
    "Complete",
    "Batch",
    "Watch",
    "Status",
    "MemberList",
    "AddLearner",
    "Promote",
    "RemoveMember",
    "TransferLeader",
];

/// The label for a request path, or `None` for peer traffic.
fn method_label(path: &str) -> Option<&'static str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        "inflight.v1.Raft" => None,
        "inflight.v1.InFlight" | "inflight.v1.Cluster" => Some(
            METHODS
                .iter()
                .find(|m| **m == method)
                .copied()
                .unwrap_or("unknown"),
        ),
        _ => Some("unknown"),
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(method) = method {
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .map(tonic::Code::from)
                    .unwrap_or(tonic::Code::Ok);
                METRICS.observe_grpc(method, started, code);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn labels_come_only_from_known_methods() {
        assert_eq!(method_label("/inflight.v1.InFlight/Insert"), Some("Insert"));
        assert_eq!(method_label("/inflight.v1.Cluster/Status"), Some("Status"));
        assert_eq!(method_label("/inflight.v1.Raft/Vote"), None);
        assert_eq!(
            method_label("/inflight.v1.InFlight/x-garbage-123"),
            Some("unknown")
        );
        assert_eq!(method_label("/evil/path"), Some("unknown"));
        assert_eq!(method_label("nonsense"), None);
    }
}
