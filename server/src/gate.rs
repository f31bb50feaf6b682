//! Every Flight call passes one gate: it gets a request id, is authenticated, takes
//! one of `max_concurrent_calls` slots (or is refused with RESOURCE_EXHAUSTED, not
//! queued), runs under the deadline of its kind, has its panics caught and turned
//! into INTERNAL with the request id, and is counted in the metrics when it ends,
//! however it ends (answered, failed, timed out, or dropped by the client).
//!
//! ```text
//! admit(rpc, headers) ─> Call ─ authorize(role, kind) ─ run(fut) / stream(fut) ─> Response
//!   id, principal, slot        deadline, metric label     catch_unwind, timeout, metrics
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Response, Status};
use tracing::{error, warn};

use crate::auth::{self, Authenticator, Principal, Role};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::redact::redact;

/// A boxed stream of call results, as tonic's streaming responses are.
pub(crate) type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What a call does, for its deadline and its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// One online lookup (DoGet).
    Online,
    /// An online lookup session (DoExchange): no overall deadline, it lasts as long
    /// as the scorer; each batch is timed in the metrics.
    OnlineSession,
    /// A historical retrieval.
    Historical,
    /// A materialize action.
    Materialize,
    /// A push (DoPut of a source's rows).
    Push,
    /// Schemas, listings, status, handshakes.
    Metadata,
}

impl CallKind {
    fn label(&self) -> &'static str {
        match self {
            CallKind::Online => "online",
            CallKind::OnlineSession => "online_session",
            CallKind::Historical => "historical",
            CallKind::Materialize => "materialize",
            CallKind::Push => "push",
            CallKind::Metadata => "metadata",
        }
    }

    fn deadline(&self, l: &Limits) -> Option<(Duration, &'static str)> {
        let secs = |s: u64, name| Some((Duration::from_secs(s), name));
        match self {
            CallKind::Online => secs(l.online_deadline_secs, "online_deadline_secs"),
            CallKind::OnlineSession => None,
            CallKind::Historical => secs(l.historical_deadline_secs, "historical_deadline_secs"),
            CallKind::Materialize => secs(l.materialize_deadline_secs, "materialize_deadline_secs"),
            CallKind::Push => secs(l.push_deadline_secs, "push_deadline_secs"),
            CallKind::Metadata => secs(l.metadata_deadline_secs, "metadata_deadline_secs"),
        }
    }
}

/// The gate: shared by every call of one server.
#[derive(Debug)]
pub(crate) struct Gate {
    auth: Option<Arc<Authenticator>>,
    slots: Arc<Semaphore>,
    limits: Limits,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
}

impl Gate {
    /// A gate with `auth` (None: every caller is an operator), `limits` and `metrics`.
    pub(crate) fn new(
        auth: Option<Arc<Authenticator>>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            auth,
            slots: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1))),
            limits,
            metrics,
            next_id: AtomicU64::new(1),
        }
    }

    /// The limits calls run under.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The metrics calls are counted in.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Authenticates `request`'s caller and gives the call its id and slot.
    pub(crate) fn admit(
        &self,
        rpc: &'static str,
        authorization: Option<&str>,
    ) -> Result<Arc<Call>, Status> {
        let refuse = |status: Status| {
            self.metrics.call_refused(rpc, status.code());
            status
        };
        let principal = match &self.auth {
            None => Arc::new(Principal::anonymous()),
            Some(a) => a
                .authenticate(authorization)
                .map_err(|e| refuse(auth_status(e)))?,
        };
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            refuse(Status::resource_exhausted(format!(
                "the server is serving {} calls, its limit (server.limits.max_concurrent_calls); retry later",
                self.limits.max_concurrent_calls
            )))
        })?;
        self.metrics.call_started();
        let started = Instant::now();
        let default = CallKind::Metadata
            .deadline(&self.limits)
            .map(|(d, n)| (started + d, n));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Call {
            id,
            span: tracing::info_span!("call", request = id, rpc, principal = %principal.name),
            rpc,
            principal,
            _slot: slot,
            started,
            deadline: Mutex::new(default),
            kind: OnceLock::new(),
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
            finished: AtomicBool::new(false),
            bytes: AtomicUsize::new(0),
            rows: AtomicUsize::new(0),
        }))
    }
}

/// An authentication error as a gRPC status (never echoing the token).
pub(crate) fn auth_status(e: auth::Error) -> Status {
    match e {
        auth::Error::Unauthenticated(m) => Status::unauthenticated(m),
        auth::Error::PermissionDenied(m) => Status::permission_denied(m),
        auth::Error::File { .. } => Status::internal("the server's tokens file is unreadable"),
    }
}

/// One admitted call.
#[derive(Debug)]
pub(crate) struct Call {
    id: u64,
    /// Every log line of the call carries its request id.
    span: tracing::Span,
    rpc: &'static str,
    principal: Arc<Principal>,
    _slot: OwnedSemaphorePermit,
    started: Instant,
    deadline: Mutex<Option<(Instant, &'static str)>>,
    kind: OnceLock<CallKind>,
    limits: Limits,
    metrics: Arc<Metrics>,
    finished: AtomicBool,
    bytes: AtomicUsize,
    rows: AtomicUsize,
}

impl Call {
    /// The request id (in logs and in INTERNAL errors).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The metrics this call is counted in.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The caller's token name (`anonymous` without `server.auth`).
    pub(crate) fn principal_name(&self) -> &str {
        &self.principal.name
    }

    /// PERMISSION_DENIED unless the caller has `role`; sets the call's kind (its
    /// deadline and metric label).
    pub(crate) fn authorize(&self, role: Role, kind: CallKind, what: &str) -> Result<(), Status> {
        let _ = self.kind.set(kind);
        *self.deadline.lock().expect("not poisoned") = kind
            .deadline(&self.limits)
            .map(|(d, n)| (self.started + d, n));
        self.principal.require(role, what).map_err(auth_status)
    }

    /// PERMISSION_DENIED if the caller is restricted to services and the request
    /// reads outside them. `within` says whether the requested features are all
    /// served by the given services.
    pub(crate) fn check_services(
        &self,
        service: Option<&str>,
        within: impl FnOnce(&[String]) -> Result<bool, Status>,
    ) -> Result<(), Status> {
        let Some(allowed) = &self.principal.services else {
            return Ok(());
        };
        let ok = match service {
            Some(s) => allowed.iter().any(|a| a == s),
            None => within(allowed)?,
        };
        if ok {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "token {:?} may read only the feature services {:?}",
                self.principal.name, allowed
            )))
        }
    }

    fn label(&self) -> String {
        match self.kind.get() {
            Some(k) => format!("{}_{}", self.rpc, k.label()),
            None => self.rpc.to_string(),
        }
    }

    /// Counts rows sent.
    pub(crate) fn add_rows(&self, rows: usize) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }

    fn finish(&self, code: Code) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let label = self.label();
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.call_finished(&label, code, seconds);
        self.metrics.served(
            &label,
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        if code != Code::Ok && code != Code::Cancelled {
            tracing::debug!(
                request = self.id,
                call = %label,
                ?code,
                us = self.started.elapsed().as_micros() as u64,
                "call failed"
            );
        }
    }

    fn deadline(&self) -> Option<(Instant, &'static str)> {
        *self.deadline.lock().expect("not poisoned")
    }

    fn deadline_status(&self, name: &str) -> Status {
        let what = self.kind.get().map_or("call", |k| k.label());
        Status::deadline_exceeded(format!(
            "the {what} call (request {}) passed its deadline (server.limits.{name})",
            self.id
        ))
    }

    fn panicked(&self, panic: Box<dyn std::any::Any + Send>) -> Status {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        error!(request = self.id, call = %self.label(), panic = %redact(&message), "a call panicked; this is a bug");
        Status::internal(format!(
            "internal error in request {} (a bug; the server log has details)",
            self.id
        ))
    }

    /// Runs `fut` under the call's deadline with panics caught.
    async fn guarded<T>(&self, fut: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let fut = tracing::Instrument::instrument(fut, self.span.clone());
        let mut fut = std::pin::pin!(AssertUnwindSafe(fut).catch_unwind());
        let mut timer: Option<(Pin<Box<tokio::time::Sleep>>, &'static str)> = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(r.unwrap_or_else(|p| Err(self.panicked(p))));
            }
            // The deadline is known once the call is authorized (inside `fut`).
            if let Some((at, name)) = self.deadline() {
                let at = tokio::time::Instant::from_std(at);
                let stale = timer.as_ref().is_none_or(|(t, _)| t.deadline() != at);
                if stale {
                    timer = Some((Box::pin(tokio::time::sleep_until(at)), name));
                }
            }
            if let Some((t, name)) = timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(self.deadline_status(name)));
                }
            }
            Poll::Pending
        })
        .await
    }

    fn respond<T>(&self, value: T) -> Response<T> {
        let mut r = Response::new(value);
        r.metadata_mut().insert(
            "x-request-id",
            self.id.to_string().parse().expect("digits are ASCII"),
        );
        r
    }

    /// Runs a unary call.
    pub(crate) async fn run<T>(
        self: &Arc<Self>,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let r = self.guarded(fut).await;
        self.finish(r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok));
        r.map(|v| self.respond(v))
    }

    /// Runs a streaming call: `fut` sets it up, then its stream runs under the same
    /// deadline and panic catch, and the call ends with the stream.
    pub(crate) async fn stream<T: Send + 'static>(
        self: &Arc<Self>,
        measure: fn(&T) -> usize,
        fut: impl Future<Output = Result<BoxedStream<T>, Status>>,
    ) -> Result<Response<BoxedStream<T>>, Status> {
        match self.guarded(fut).await {
            Ok(inner) => {
                let guarded = Guarded {
                    inner,
                    call: self.clone(),
                    timer: None,
                    done: false,
                    measure,
                };
                Ok(self.respond(guarded.boxed()))
            }
            Err(s) => {
                self.finish(s.code());
                Err(s)
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped without an answer: the client went away (or the stream was dropped).
        self.finish(Code::Cancelled);
    }
}

/// A response stream under its call's deadline, with panics caught.
struct Guarded<T> {
    inner: BoxedStream<T>,
    call: Arc<Call>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    measure: fn(&T) -> usize,
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let _span = this.call.span.clone().entered();
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| this.inner.poll_next_unpin(cx)));
        let end = |this: &mut Self, code: Code| {
            this.done = true;
            this.call.finish(code);
        };
        match polled {
            Err(p) => {
                let s = this.call.panicked(p);
                end(this, Code::Internal);
                Poll::Ready(Some(Err(s)))
            }
            Ok(Poll::Ready(None)) => {
                end(this, Code::Ok);
                Poll::Ready(None)
            }
            Ok(Poll::Ready(Some(Err(s)))) => {
                end(this, s.code());
                Poll::Ready(Some(Err(s)))
            }
            Ok(Poll::Ready(Some(Ok(item)))) => {
                let n = (this.measure)(&item);
                this.call.bytes.fetch_add(n, Ordering::Relaxed);
                Poll::Ready(Some(Ok(item)))
            }
            Ok(Poll::Pending) => {
                let Some((at, name)) = this.call.deadline() else {
                    return Poll::Pending;
                };
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at)))
                });
                if timer.as_mut().poll(cx).is_ready() {
                    let s = this.call.deadline_status(name);
                    warn!(request = this.call.id, "call passed its deadline");
                    end(this, Code::DeadlineExceeded);
                    return Poll::Ready(Some(Err(s)));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limits: Limits) -> Gate {
        Gate::new(None, limits, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn panics_become_internal_with_the_request_id() {
        let g = gate(Limits::default());
        let call = g.admit("do_get", None).unwrap();
        let r = call
            .run(async {
                if call.id() > 0 {
                    panic!("boom at 4000000000000202");
                }
                Ok(())
            })
            .await;
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::Internal);
        assert!(
            s.message().contains(&format!("request {}", call.id())),
            "{}",
            s.message()
        );

        let call = g.admit("do_get", None).unwrap();
        let stream: BoxedStream<u8> = futures::stream::iter([Ok(1u8)])
            .chain(futures::stream::poll_fn(
                |_| -> Poll<Option<Result<u8, Status>>> { panic!("inside a stream") },
            ))
            .boxed();
        let out: Vec<_> = call
            .stream(|_| 1, async { Ok(stream) })
            .await
            .unwrap()
            .into_inner()
            .collect()
            .await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ref().unwrap_err().code(), Code::Internal);
    }

    #[tokio::test]
    async fn deadlines_and_slots() {
        let limits = Limits {
            online_deadline_secs: 0,
            max_concurrent_calls: 1,
            ..Limits::default()
        };
        let g = gate(limits);
        let call = g.admit("do_get", None).unwrap();
        let busy = g.admit("do_get", None).unwrap_err();
        assert_eq!(busy.code(), Code::ResourceExhausted);
        let r = call
            .run(async {
                call.authorize(Role::Reader, CallKind::Online, "lookup")?;
                futures::future::pending::<Result<(), Status>>().await
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::DeadlineExceeded);
        drop(call);
        assert!(g.admit("do_get", None).is_ok(), "the slot is free again");
    }
}
