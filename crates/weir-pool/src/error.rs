//! Every way a dispatch can end without the app's own answer. Each names its class of the
//! error contract (weir-errors), which gives its status; the front door turns it into an
//! answer in one function (docs/architecture.md, "The error contract").

use std::time::Duration;

use thiserror::Error;
use weir_errors::ErrorClass;

/// Why a request got no answer from the app.
#[derive(Debug, Error)]
pub enum DispatchError {
    /// The wait queue is at its bound.
    #[error("all workers are busy and {max} requests already wait")]
    QueueFull {
        /// The bound.
        max: usize,
    },
    /// The request's fairness key already has `per_key_max` requests waiting.
    #[error("{max} requests of the same fair_key (per_key_max) already wait for a worker; others are served in turn")]
    QueueKeyFull {
        /// `per_key_max`.
        max: usize,
    },
    /// No worker became free within the queue timeout.
    #[error("no worker became free within {0:?}")]
    QueueTimeout(Duration),
    /// Shed: the queue's delay stayed above the target for the whole CoDel interval and
    /// the request waited longer than the target.
    #[error(
        "overload: the queue's delay has stayed above {target:?} for over {interval:?}, so \
         requests waiting longer than {target:?} are refused and the others served fast"
    )]
    QueueShed {
        /// The delay target.
        target: Duration,
        /// The interval.
        interval: Duration,
    },
    /// Refused at arrival: the work ahead of it would take longer to clear than it may
    /// wait (`[queue] admission`).
    #[error("{0}")]
    QueuePredicted(weir_queue::QueueRefusal),
    /// The request ran past harakiri; its worker was killed.
    #[error("the request ran longer than harakiri ({0:?}); its worker was killed")]
    Harakiri(Duration),
    /// The worker exited (crash, os._exit, OOM killer) before the response was complete.
    #[error("the worker died while serving the request")]
    WorkerDied,
    /// The worker broke the protocol (a bug in weir or memory corruption in the app).
    #[error("the worker sent a malformed response: {0}")]
    Protocol(String),
    /// The request cannot be expressed as a uwsgi packet (headers over 64 KiB).
    #[error("request headers too large for a worker packet: {0}")]
    HeadersTooLarge(#[from] weir_uwsgi::packet::EncodeError),
    /// The pool is stopping and accepts no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request's deadline passed before a worker could start it.
    #[error("the request's deadline passed before a worker was free")]
    DeadlineExceeded,
    /// The client's streamed request body failed mid-way; the worker waiting for it was
    /// replaced.
    #[error("{0}")]
    ClientBody(ClientBodyError),
}

/// How a streamed request body failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyError {
    /// It went over `max_body_size`.
    #[error("the request body is over max_body_size")]
    TooLarge,
    /// The client paused longer than `client_body_timeout`.
    #[error("the client paused its request body longer than client_body_timeout")]
    Timeout,
    /// The client's connection failed mid-body.
    #[error("the client's connection failed mid-body")]
    Closed,
}

impl From<weir_queue::QueueRefusal> for DispatchError {
    fn from(r: weir_queue::QueueRefusal) -> Self {
        use weir_queue::QueueRefusal as R;
        match r {
            R::Full { max } => DispatchError::QueueFull { max },
            R::KeyFull { max } => DispatchError::QueueKeyFull { max },
            R::Timeout(d) => DispatchError::QueueTimeout(d),
            R::Shed { target, interval } => DispatchError::QueueShed { target, interval },
            R::Deadline => DispatchError::DeadlineExceeded,
            p @ R::Predicted { .. } => DispatchError::QueuePredicted(p),
        }
    }
}

impl DispatchError {
    /// The Retry-After (seconds) the failure itself suggests (a refusal at arrival: from
    /// its estimate); `None`: the configured one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            DispatchError::QueuePredicted(r) => r.retry_after(),
            _ => None,
        }
    }

    /// The attribution class (`x-weir-error`, access log, metric label).
    pub fn class(&self) -> ErrorClass {
        match self {
            DispatchError::QueueFull { .. }
            | DispatchError::QueueKeyFull { .. }
            | DispatchError::QueuePredicted(_) => ErrorClass::QueueFull,
            DispatchError::QueueTimeout(_) | DispatchError::QueueShed { .. } => {
                ErrorClass::QueueTimeout
            }
            DispatchError::Harakiri(_) => ErrorClass::Harakiri,
            DispatchError::WorkerDied => ErrorClass::WorkerDied,
            DispatchError::Protocol(_) => ErrorClass::WorkerProtocol,
            DispatchError::HeadersTooLarge(_) => ErrorClass::HeaderTooLarge,
            DispatchError::ShuttingDown => ErrorClass::ShuttingDown,
            DispatchError::DeadlineExceeded => ErrorClass::Deadline,
            DispatchError::ClientBody(ClientBodyError::TooLarge) => ErrorClass::BodyTooLarge,
            DispatchError::ClientBody(ClientBodyError::Timeout) => ErrorClass::ClientTimeout,
            DispatchError::ClientBody(ClientBodyError::Closed) => ErrorClass::ClientClosed,
        }
    }
}
