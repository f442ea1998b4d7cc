//! Per-RPC latency: a tower layer around a backend's gRPC services that times each call from
//! the request to the end of its reply and records it by method and final gRPC code.
//!
//! The code is read where gRPC puts it: in the response headers for a call that fails at once
//! (tonic answers errors "trailers-only"), else in the trailers after the body. A reply dropped
//! before either (the client went away) counts as CANCELLED. Each call is recorded exactly
//! once: [`Call`] records on its first finish or, failing that, when it is dropped.
//!
//! Plain `http` types only: this layer needs no tonic, so the metrics module stays below the
//! adapters.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{Metrics, RpcLabels};

/// The CSI methods, by name; a path naming anything else is recorded as `other`, so that a
/// client cannot grow the label set.
const METHODS: &[&str] = &[
    "GetPluginInfo",
    "GetPluginCapabilities",
    "Probe",
    "CreateVolume",
    "DeleteVolume",
    "ControllerPublishVolume",
    "ControllerUnpublishVolume",
    "ValidateVolumeCapabilities",
    "ListVolumes",
    "GetCapacity",
    "ControllerGetCapabilities",
    "CreateSnapshot",
    "DeleteSnapshot",
    "ListSnapshots",
    "GetSnapshot",
    "ControllerExpandVolume",
    "ControllerGetVolume",
    "ControllerModifyVolume",
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
    "GroupControllerGetCapabilities",
    "CreateVolumeGroupSnapshot",
    "DeleteVolumeGroupSnapshot",
    "GetVolumeGroupSnapshot",
];

/// The gRPC status codes by number, as the gRPC documentation spells them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `/csi.v1.Node/NodePublishVolume` → `NodePublishVolume`; anything unknown → `other`.
pub fn method_label(path: &str) -> &'static str {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    if !service.starts_with("csi.v1.") {
        return "other";
    }
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The name of the code in a `grpc-status` header, if there is one.
pub fn code_label(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    let number: usize = value.trim().parse().ok()?;
    Some(CODES.get(number).copied().unwrap_or("UNKNOWN"))
}

/// Times every call of the services it wraps, as `backend`'s.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    backend: &'static str,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>, backend: &'static str) -> Self {
        Self { metrics, backend }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

impl<S, B, R> Service<Request<B>> for RpcService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<TimedBody<R>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = Call {
            metrics: Arc::clone(&self.layer.metrics),
            backend: self.layer.backend,
            method: method_label(request.uri().path()),
            started: Instant::now(),
            code: None,
            done: false,
        };
        ResponseFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

/// One call being timed; records itself once.
struct Call {
    metrics: Arc<Metrics>,
    backend: &'static str,
    method: &'static str,
    started: Instant,
    /// The code from the response headers, if they carried one.
    code: Option<&'static str>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        let labels = RpcLabels {
            backend: self.backend,
            method: self.method,
            code,
        };
        self.metrics.observe_rpc(&labels, self.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Headers with a code and no trailers: a trailers-only reply, complete. Neither: the
        // reply was abandoned part-way.
        self.finish(self.code.unwrap_or("CANCELLED"));
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, R, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<TimedBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(call) = call.as_mut() {
                    call.code = code_label(response.headers());
                }
                Ok(response.map(|inner| TimedBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = call.as_mut() {
                    call.finish("UNKNOWN");
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A reply body that records its call when the trailers (or the end) go by.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(code) = f.trailers_ref().and_then(code_label) {
                        call.finish(code);
                    }
                }
                Some(Err(_)) => call.finish("UNKNOWN"),
                None => {
                    let code = call.code.unwrap_or("UNKNOWN");
                    call.finish(code);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_closed_set() {
        assert_eq!(
            method_label("/csi.v1.Node/NodePublishVolume"),
            "NodePublishVolume"
        );
        assert_eq!(method_label("/csi.v1.Identity/Probe"), "Probe");
        for other in [
            "/csi.v1.Node/vol-1234",
            "/other.Service/Probe",
            "/",
            "",
            "/csi.v1.Node",
        ] {
            assert_eq!(method_label(other), "other", "{other}");
        }
    }

    #[test]
    fn codes_are_named_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(code_label(&h), None);
        h.insert("grpc-status", "10".parse().unwrap());
        assert_eq!(code_label(&h), Some("ABORTED"));
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(code_label(&h), Some("OK"));
        h.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(code_label(&h), Some("UNKNOWN"));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(code_label(&h), None);
    }

    fn count(m: &Metrics, method: &str, code: &str) -> u64 {
        let needle = format!(
            "pvdir_grpc_request_duration_seconds_count{{backend=\"local\",method=\"{method}\",code=\"{code}\"}} "
        );
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map_or(0, |n| n.parse().unwrap())
    }

    #[test]
    fn a_call_records_once_with_its_final_code() {
        let m = Arc::new(Metrics::new());
        let call = |code| Call {
            metrics: Arc::clone(&m),
            backend: "local",
            method: "Probe",
            started: Instant::now(),
            code,
            done: false,
        };
        // Trailers seen, then dropped: one OK.
        let mut c = call(None);
        c.finish("OK");
        drop(c);
        // Trailers-only error: the header's code when dropped.
        drop(call(Some("NOT_FOUND")));
        // Neither: the client went away.
        drop(call(None));
        assert_eq!(count(&m, "Probe", "OK"), 1);
        assert_eq!(count(&m, "Probe", "NOT_FOUND"), 1);
        assert_eq!(count(&m, "Probe", "CANCELLED"), 1);
    }
}
