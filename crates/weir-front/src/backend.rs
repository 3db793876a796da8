//! Where an admitted request goes, behind one trait: [`Dispatch`], implemented by weir's
//! own worker pool (weir-pool's `Pool`) and by an external app server (weir-upstream's
//! `Upstream`), and by [`Backend`], the one the server was started with.
//!
//! Both backends wait in the same admission queue (crate weir-queue: its bound, timeout,
//! deadline and CoDel), count requests waiting for a route's slot in front of them
//! ([`Dispatch::enter_queue`]), and hold the route's slot to the end of the response body.
//! Their failures each name a class of the error contract and reach the client through
//! [`Rejection`].
//!
//! A trait with `async fn` and an enum rather than tower's `Service`: the request path has
//! two backends known at build time, each call borrows the front door's state for its
//! duration, and nothing is boxed per request; tower's layers would add a `poll_ready`
//! and a boxed future per stage for no composition weir needs (see docs/architecture.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use weir_errors::ErrorClass;
use weir_pool::{DispatchError, Pool, QueuePlace, RequestBody, ResponseBody, WorkerRequest};
use weir_queue::SlotPermit;
use weir_upstream::{is_idempotent, Upstream, UpstreamRequest};

use crate::access_log::Record;
use crate::conn_io::ClientWatch;
use crate::dispatch::{client_gone, Job, Work};
use crate::front::Front;
use crate::rejection::Rejection;
use crate::route::Route;

/// A request that has its route's slot (if the route has a limit), ready for a backend.
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    /// Its route.
    pub route: &'a Route,
    /// Its deadline.
    pub deadline: Option<Instant>,
    /// What to send.
    pub job: Job<'a>,
    /// The route's slot: held to the end of the response body.
    pub hold: Option<SlotPermit>,
    /// When it began waiting (the access log's `queue_ms` starts here).
    pub queued_at: Instant,
}

/// A backend of the front door.
pub(crate) trait Dispatch {
    /// Requests waiting now: in the backend's queue and for a route's slot in front of it.
    fn queue_depth(&self) -> usize;

    /// Holds a place in the backend's queue for a request about to wait for its route's
    /// slot: it counts against the queue's bound and in its depth until dropped.
    fn enter_queue(&self, front: &Front) -> Result<QueuePlace, Rejection>;

    /// Sends an admitted request: waits in the backend's queue, then returns the response
    /// head (its body streams on), or why there is none. Fills the record's `queued` and
    /// `worker` times.
    async fn send(
        &self,
        front: &Front,
        watch: &ClientWatch,
        req: Admitted<'_>,
        rec: &mut Record,
    ) -> Result<Response<ResponseBody>, Rejection>;
}

/// The backend the server was started with.
#[derive(Debug)]
pub enum Backend {
    /// weir's own workers.
    Workers(Pool),
    /// An external app server.
    Upstream(Arc<Upstream>),
}

impl Dispatch for Backend {
    fn queue_depth(&self) -> usize {
        match self {
            Backend::Workers(p) => Dispatch::queue_depth(p),
            Backend::Upstream(u) => Dispatch::queue_depth(u.as_ref()),
        }
    }

    fn enter_queue(&self, front: &Front) -> Result<QueuePlace, Rejection> {
        match self {
            Backend::Workers(p) => Dispatch::enter_queue(p, front),
            Backend::Upstream(u) => Dispatch::enter_queue(u.as_ref(), front),
        }
    }

    async fn send(
        &self,
        front: &Front,
        watch: &ClientWatch,
        req: Admitted<'_>,
        rec: &mut Record,
    ) -> Result<Response<ResponseBody>, Rejection> {
        match self {
            Backend::Workers(p) => p.send(front, watch, req, rec).await,
            Backend::Upstream(u) => u.as_ref().send(front, watch, req, rec).await,
        }
    }
}

fn hold(permit: Option<SlotPermit>) -> Option<Box<dyn std::any::Any + Send>> {
    permit.map(|p| Box::new(p) as Box<dyn std::any::Any + Send>)
}

impl Dispatch for Pool {
    fn queue_depth(&self) -> usize {
        Pool::queue_depth(self)
    }

    fn enter_queue(&self, front: &Front) -> Result<QueuePlace, Rejection> {
        Pool::enter_queue(self).map_err(|e| Rejection::from_dispatch(&e, front.retry_after))
    }

    async fn send(
        &self,
        front: &Front,
        watch: &ClientWatch,
        req: Admitted<'_>,
        rec: &mut Record,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let Admitted {
            route,
            deadline,
            job,
            hold: permit,
            queued_at,
        } = req;
        let reject = |e: DispatchError| Rejection::from_dispatch(&e, front.retry_after);
        let Work::Packet(packet) = job.work else {
            unreachable!("an HTTP head is built only for HTTP upstreams")
        };
        let req = WorkerRequest {
            packet,
            body: job.body,
            harakiri: route.harakiri,
            deadline,
            hold: hold(permit),
            body_timeout: front.body_timeout,
            service: Some(route.service.clone()),
            fair_key: job.fair_key,
            spool: route.buffering.then(|| front.spool.clone()),
            retry: job.retry,
        };
        // Waiting for a worker. The worker that frees starts the request itself.
        let started = tokio::select! {
            biased;
            s = self.submit(req) => s.map_err(reject),
            () = watch.gone() => Err(client_gone()),
        };
        rec.queued = queued_at.elapsed();
        let started = started?;
        let at = Instant::now();
        // A request written behind a busy worker's current one has not started yet: if its
        // client leaves now, dropping `started` takes it back, so it is never run.
        let resp = if started.is_offered() {
            tokio::select! {
                biased;
                r = started.response() => r,
                () = watch.gone() => {
                    rec.worker = at.elapsed();
                    return Err(client_gone());
                }
            }
        } else {
            started.response().await
        };
        rec.worker = at.elapsed();
        // An offered request waited until its worker started it (or until its wait ran out).
        match &resp {
            Ok(r) => {
                if let Some(weir_pool::StartedAt(t)) = r.extensions().get() {
                    rec.queued = t.saturating_duration_since(queued_at);
                    rec.worker = t.elapsed();
                }
            }
            Err(DispatchError::QueueTimeout(_) | DispatchError::QueueShed { .. }) => {
                rec.queued = queued_at.elapsed();
                rec.worker = Duration::ZERO;
            }
            Err(_) => {}
        }
        resp.map_err(reject)
    }
}

impl Dispatch for Upstream {
    fn queue_depth(&self) -> usize {
        self.queued()
    }

    fn enter_queue(&self, front: &Front) -> Result<QueuePlace, Rejection> {
        Upstream::enter_queue(self).map_err(|e| Rejection::from_upstream(&e, front.retry_after))
    }

    async fn send(
        &self,
        front: &Front,
        watch: &ClientWatch,
        req: Admitted<'_>,
        rec: &mut Record,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let Admitted {
            route,
            deadline,
            job,
            hold: permit,
            queued_at,
        } = req;
        // Request bodies reach an upstream whole.
        let body = match job.body {
            RequestBody::Empty => Bytes::new(),
            RequestBody::Full(b) => b,
            RequestBody::Stream { body, .. } => {
                body.collect().await.map(|c| c.to_bytes()).map_err(|e| {
                    Rejection::new(
                        ErrorClass::BadRequest,
                        format!("the request body could not be read: {e}"),
                    )
                })?
            }
        };
        let req = match job.work {
            Work::Packet(packet) => UpstreamRequest::Uwsgi { packet, body },
            Work::Http(head) => UpstreamRequest::Http(Request::from_parts(head, body)),
        };
        let idempotent = is_idempotent(job.method);
        // The answer is read into a spool, freeing the connection early (as for a worker),
        // unless the route has `buffering = false`.
        let spool = route.buffering.then(|| front.spool.clone());
        rec.queued = queued_at.elapsed();
        let started = Instant::now();
        // The route's slot is held to the end of the response body, as for a worker. A
        // client that leaves before the head ends the exchange (NGINX's default,
        // `proxy_ignore_client_abort off`).
        let resp = tokio::select! {
            biased;
            r = self.dispatch(req, idempotent, deadline, job.fair_key, hold(permit), spool) => {
                r.map_err(|e| Rejection::from_upstream(&e, front.retry_after))
            }
            () = watch.gone() => Err(client_gone()),
        };
        rec.worker = started.elapsed();
        resp
    }
}
