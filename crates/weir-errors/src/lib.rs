//! weir's error contract, defined once.
//!
//! Every answer weir makes itself, rather than the app, carries `x-weir-error: <class>`,
//! and the same class is the access log's `error` field and the `class` label of
//! `weir_requests_total`. [`ErrorClass`] is that class: its wire name, its status, whether
//! the answer carries Retry-After (a retry can help: the refusal was about load, not about
//! the request), and where the failure came from ([`Origin`], as Pingora records an
//! error's source), which the access log writes next to it.
//!
//! The error types of the other crates (weir-http1's framing refusals, weir-pool's
//! `DispatchError`, weir-upstream's `UpstreamError`) each name their class; the front door
//! turns any of them into a response in one function (weir-front's `rejection`). Adding a
//! class is one variant here, its row in [`ErrorClass::ALL`]'s match arms, and its row in
//! docs/errors.md (a test checks that every class has one). See docs/architecture.md.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

use http::StatusCode;

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The client: a malformed, refused or abandoned request.
    Client,
    /// weir itself: a limit, the queue, a deadline, shutdown.
    Weir,
    /// A managed worker: the app raised, ran too long, died, or broke the protocol.
    Worker,
    /// An external upstream (`[upstream]`).
    Upstream,
    /// The app's database: the app raised a driver exception that `[[error_map]]` (or the
    /// `[errors] mysql` preset) maps to a `db-*` class (a lock conflict, the server away, a
    /// statement timeout).
    Database,
}

impl Origin {
    /// The name in the access log (`"origin"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Weir => "weir",
            Origin::Worker => "worker",
            Origin::Upstream => "upstream",
            Origin::Database => "database",
        }
    }
}

/// The class of an answer weir made itself (see the crate doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// Every worker (or upstream connection) busy and `[queue] max_size` already waiting.
    QueueFull,
    /// No worker (or route slot) freed within `[queue] timeout`, or shed by the delay
    /// target under overload.
    QueueTimeout,
    /// The request's `request_timeout` passed before it started, or while it ran.
    Deadline,
    /// The request ran past `harakiri`; its worker was killed.
    Harakiri,
    /// The worker exited mid-request.
    WorkerDied,
    /// The worker broke the master<->worker protocol.
    WorkerProtocol,
    /// The app raised before `start_response`.
    AppException,
    /// A malformed request (head, body framing, uwsgi packet).
    BadRequest,
    /// A method weir does not serve (CONNECT: weir does not tunnel; TRACE).
    MethodNotAllowed,
    /// A transfer coding weir does not implement.
    NotImplemented,
    /// The request head is over `max_header_size` (or does not fit a uwsgi packet).
    HeaderTooLarge,
    /// The body is over `max_body_size`.
    BodyTooLarge,
    /// The client paused its body longer than `client_body_timeout`.
    ClientTimeout,
    /// The client left before its answer (NGINX's 499: log and metrics only).
    ClientClosed,
    /// An upstream could not be reached.
    UpstreamConnect,
    /// An upstream went quiet longer than `read_timeout`.
    UpstreamTimeout,
    /// An upstream closed early or answered something that is not HTTP.
    UpstreamProtocol,
    /// weir is draining after SIGTERM.
    ShuttingDown,
    /// The admin listener has no such endpoint.
    NotFound,
    /// The admin listener's `/readyz`: no worker is up, or the app's ready check failed.
    NotReady,
    /// A `[limit_req.NAME]` zone refused the request (its key is over its rate and burst).
    /// Default status 429; the zone's `status` overrides it ([`ErrorClass::status_or`]).
    RateLimited,
    /// A `[limit_conn.NAME]` zone refused the request (its key already has `max` requests
    /// in progress). Default status 429; the zone's `status` overrides it.
    ConnLimited,
    /// The app raised a database exception that the error map names a conflict (MySQL
    /// 1205 lock wait timeout, 1213 deadlock). Default status 409, with Retry-After; the
    /// map entry's `status` overrides it.
    DbConflict,
    /// The app raised a database exception that the error map names the database away
    /// (1040/1203 too many connections, 2002/2003/2006/2013 server gone). Default 503,
    /// with Retry-After.
    DbUnavailable,
    /// The app raised a database exception that the error map names a statement timeout
    /// (MySQL 3024, MariaDB 1969 `max_statement_time`). Default 504.
    DbTimeout,
    /// The app raised an exception that an `[[error_map]]` entry maps without naming a
    /// `db-*` class. Its status is the entry's `status` (default 500).
    AppMapped,
}

impl ErrorClass {
    /// Every class, in the order of docs/errors.md.
    pub const ALL: [ErrorClass; 26] = [
        ErrorClass::QueueFull,
        ErrorClass::QueueTimeout,
        ErrorClass::Deadline,
        ErrorClass::Harakiri,
        ErrorClass::WorkerDied,
        ErrorClass::WorkerProtocol,
        ErrorClass::AppException,
        ErrorClass::BadRequest,
        ErrorClass::MethodNotAllowed,
        ErrorClass::NotImplemented,
        ErrorClass::HeaderTooLarge,
        ErrorClass::BodyTooLarge,
        ErrorClass::ClientTimeout,
        ErrorClass::ClientClosed,
        ErrorClass::UpstreamConnect,
        ErrorClass::UpstreamTimeout,
        ErrorClass::UpstreamProtocol,
        ErrorClass::ShuttingDown,
        ErrorClass::NotFound,
        ErrorClass::NotReady,
        ErrorClass::RateLimited,
        ErrorClass::ConnLimited,
        ErrorClass::DbConflict,
        ErrorClass::DbUnavailable,
        ErrorClass::DbTimeout,
        ErrorClass::AppMapped,
    ];

    /// The classes an `[[error_map]]` entry may name (`class`): the answers the worker
    /// makes for an exception the map matches.
    pub const MAPPED: [ErrorClass; 4] = [
        ErrorClass::DbConflict,
        ErrorClass::DbUnavailable,
        ErrorClass::DbTimeout,
        ErrorClass::AppMapped,
    ];

    /// The wire name (`x-weir-error`, the access log, the metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::QueueFull => "queue-full",
            ErrorClass::QueueTimeout => "queue-timeout",
            ErrorClass::Deadline => "deadline",
            ErrorClass::Harakiri => "harakiri",
            ErrorClass::WorkerDied => "worker-died",
            ErrorClass::WorkerProtocol => "worker-protocol",
            ErrorClass::AppException => "app-exception",
            ErrorClass::BadRequest => "bad-request",
            ErrorClass::MethodNotAllowed => "method-not-allowed",
            ErrorClass::NotImplemented => "not-implemented",
            ErrorClass::HeaderTooLarge => "header-too-large",
            ErrorClass::BodyTooLarge => "body-too-large",
            ErrorClass::ClientTimeout => "client-timeout",
            ErrorClass::ClientClosed => "client-closed",
            ErrorClass::UpstreamConnect => "upstream-connect",
            ErrorClass::UpstreamTimeout => "upstream-timeout",
            ErrorClass::UpstreamProtocol => "upstream-protocol",
            ErrorClass::ShuttingDown => "shutting-down",
            ErrorClass::NotFound => "not-found",
            ErrorClass::NotReady => "not-ready",
            ErrorClass::RateLimited => "rate-limited",
            ErrorClass::ConnLimited => "conn-limited",
            ErrorClass::DbConflict => "db-conflict",
            ErrorClass::DbUnavailable => "db-unavailable",
            ErrorClass::DbTimeout => "db-timeout",
            ErrorClass::AppMapped => "app-mapped",
        }
    }

    /// The status of its answer: the class's default. The limit classes
    /// ([`ErrorClass::configurable_status`]) take their zone's `status` instead, through
    /// [`ErrorClass::status_or`].
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorClass::QueueFull
            | ErrorClass::QueueTimeout
            | ErrorClass::ShuttingDown
            | ErrorClass::NotReady
            | ErrorClass::DbUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Deadline
            | ErrorClass::Harakiri
            | ErrorClass::UpstreamTimeout
            | ErrorClass::DbTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorClass::WorkerDied
            | ErrorClass::WorkerProtocol
            | ErrorClass::UpstreamConnect
            | ErrorClass::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ErrorClass::AppException | ErrorClass::AppMapped => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorClass::DbConflict => StatusCode::CONFLICT,
            ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
            ErrorClass::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorClass::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorClass::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorClass::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorClass::ClientClosed => CLIENT_CLOSED,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::RateLimited | ErrorClass::ConnLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whether the configuration may choose its status (a limit zone's `status`, as
    /// NGINX's `limit_req_status`/`limit_conn_status`; an `[[error_map]]` entry's
    /// `status`).
    pub const fn configurable_status(self) -> bool {
        matches!(self, ErrorClass::RateLimited | ErrorClass::ConnLimited) || self.mapped()
    }

    /// Whether it is the answer to an app exception that the error map matched
    /// ([`ErrorClass::MAPPED`]): the worker makes it, with the map entry's status and
    /// Retry-After.
    pub const fn mapped(self) -> bool {
        matches!(
            self,
            ErrorClass::DbConflict
                | ErrorClass::DbUnavailable
                | ErrorClass::DbTimeout
                | ErrorClass::AppMapped
        )
    }

    /// The status of its answer given a configured one: `configured` when the class's
    /// status is configurable ([`ErrorClass::configurable_status`]) and it is given,
    /// otherwise [`ErrorClass::status`].
    pub fn status_or(self, configured: Option<StatusCode>) -> StatusCode {
        match configured {
            Some(s) if self.configurable_status() => s,
            _ => self.status(),
        }
    }

    /// Whether its answer carries Retry-After: the refusal was about load (or a drain),
    /// or a conflict that a retry resolves, so the same request may succeed later. For the
    /// mapped classes ([`ErrorClass::mapped`]) this is the default: an `[[error_map]]`
    /// entry's `retry_after` sets it either way.
    pub const fn retry_after(self) -> bool {
        matches!(
            self,
            ErrorClass::QueueFull
                | ErrorClass::QueueTimeout
                | ErrorClass::ShuttingDown
                | ErrorClass::NotReady
                | ErrorClass::RateLimited
                | ErrorClass::DbConflict
                | ErrorClass::DbUnavailable
        )
    }

    /// Where the failure came from.
    pub const fn origin(self) -> Origin {
        match self {
            ErrorClass::BadRequest
            | ErrorClass::MethodNotAllowed
            | ErrorClass::NotImplemented
            | ErrorClass::HeaderTooLarge
            | ErrorClass::BodyTooLarge
            | ErrorClass::ClientTimeout
            | ErrorClass::ClientClosed
            | ErrorClass::NotFound => Origin::Client,
            ErrorClass::QueueFull
            | ErrorClass::QueueTimeout
            | ErrorClass::Deadline
            | ErrorClass::ShuttingDown
            | ErrorClass::NotReady
            | ErrorClass::RateLimited
            | ErrorClass::ConnLimited => Origin::Weir,
            ErrorClass::Harakiri
            | ErrorClass::WorkerDied
            | ErrorClass::WorkerProtocol
            | ErrorClass::AppException
            | ErrorClass::AppMapped => Origin::Worker,
            ErrorClass::DbConflict | ErrorClass::DbUnavailable | ErrorClass::DbTimeout => {
                Origin::Database
            }
            ErrorClass::UpstreamConnect
            | ErrorClass::UpstreamTimeout
            | ErrorClass::UpstreamProtocol => Origin::Upstream,
        }
    }

    /// The class of a wire name (a worker's own answers carry it in their head).
    pub fn from_name(name: &[u8]) -> Option<ErrorClass> {
        ErrorClass::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == name)
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// NGINX's 499: the client closed the connection before the answer (logged, never sent).
pub const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => panic!("499 is a valid status"),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorClass::ALL.len());
        for c in ErrorClass::ALL {
            assert_eq!(ErrorClass::from_name(c.as_str().as_bytes()), Some(c));
        }
        assert_eq!(ErrorClass::from_name(b"no-such-class"), None);
    }

    #[test]
    fn retry_after_on_503_rate_limited_and_db_conflict() {
        for c in ErrorClass::ALL {
            assert_eq!(
                c.retry_after(),
                c.status() == StatusCode::SERVICE_UNAVAILABLE
                    || c == ErrorClass::RateLimited
                    || c == ErrorClass::DbConflict,
                "{c}"
            );
        }
    }

    #[test]
    fn limit_classes_take_the_zone_status() {
        let s503 = Some(StatusCode::SERVICE_UNAVAILABLE);
        for c in [ErrorClass::RateLimited, ErrorClass::ConnLimited] {
            assert_eq!(c.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(c.status_or(None), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(c.status_or(s503), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(c.origin(), Origin::Weir);
        }
        // the other classes keep theirs
        assert_eq!(
            ErrorClass::Deadline.status_or(s503),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ErrorClass::ALL
                .iter()
                .filter(|c| c.configurable_status())
                .count(),
            2 + ErrorClass::MAPPED.len()
        );
    }

    #[test]
    fn mapped_classes() {
        for c in ErrorClass::ALL {
            assert_eq!(c.mapped(), ErrorClass::MAPPED.contains(&c), "{c}");
        }
        for c in ErrorClass::MAPPED {
            assert!(c.configurable_status(), "{c}");
            assert!(c.status().is_client_error() || c.status().is_server_error());
        }
        assert_eq!(ErrorClass::DbConflict.status(), StatusCode::CONFLICT);
        assert_eq!(ErrorClass::DbTimeout.origin(), Origin::Database);
        assert_eq!(ErrorClass::AppMapped.origin(), Origin::Worker);
        assert_eq!(
            ErrorClass::AppMapped.status_or(Some(StatusCode::IM_A_TEAPOT)),
            StatusCode::IM_A_TEAPOT
        );
    }

    #[test]
    fn every_class_has_its_row_in_docs_errors_md() {
        let doc = include_str!("../../../docs/errors.md");
        for c in ErrorClass::ALL {
            let retry = if c.retry_after() { "yes" } else { "no" };
            let row = format!("| `{}` | {} | {retry} |", c.as_str(), c.status().as_u16());
            assert!(
                doc.contains(&row),
                "docs/errors.md has no row starting {row:?}"
            );
        }
    }
}
