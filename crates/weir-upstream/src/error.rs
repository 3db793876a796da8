//! Why an upstream gave no answer.

use std::time::Duration;

use thiserror::Error;
use weir_config::ListenAddr;
use weir_errors::ErrorClass;

/// An upstream failure.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// Every connection is busy and the queue is at its bound.
    #[error("all upstream connections are busy and {max} requests already wait")]
    QueueFull {
        /// The bound.
        max: usize,
    },
    /// No connection became free within the queue timeout.
    #[error("no upstream connection became free within {0:?}")]
    QueueTimeout(Duration),
    /// Shed by CoDel, or refused by `per_key_max`: the queue's own refusal.
    #[error("{0}")]
    Queue(weir_queue::QueueRefusal),
    /// The request's deadline passed while it waited.
    #[error("the request's deadline passed before an upstream connection was free")]
    DeadlineExceeded,
    /// The server could not be reached.
    #[error("cannot connect to upstream {server}: {source}")]
    Connect {
        /// Which.
        server: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server went quiet longer than send_timeout or read_timeout.
    #[error("upstream {server} timed out {phase}")]
    Timeout {
        /// Which.
        server: String,
        /// "sending the request" or "reading the response".
        phase: &'static str,
    },
    /// The server closed or answered something that is not a response.
    #[error("upstream {server} sent an invalid response: {message}")]
    Protocol {
        /// Which.
        server: String,
        /// What.
        message: String,
    },
}

impl From<weir_queue::QueueRefusal> for UpstreamError {
    fn from(r: weir_queue::QueueRefusal) -> Self {
        use weir_queue::QueueRefusal as R;
        match r {
            R::Full { max } => UpstreamError::QueueFull { max },
            R::Timeout(d) => UpstreamError::QueueTimeout(d),
            other @ (R::Shed { .. } | R::KeyFull { .. } | R::Predicted { .. }) => {
                UpstreamError::Queue(other)
            }
            R::Deadline => UpstreamError::DeadlineExceeded,
        }
    }
}

impl UpstreamError {
    /// The Retry-After (seconds) the failure itself suggests (a refusal at arrival: from
    /// its estimate); `None`: the configured one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            UpstreamError::Queue(r) => r.retry_after(),
            _ => None,
        }
    }

    /// The attribution class.
    pub fn class(&self) -> ErrorClass {
        match self {
            UpstreamError::QueueFull { .. } => ErrorClass::QueueFull,
            UpstreamError::QueueTimeout(_) => ErrorClass::QueueTimeout,
            UpstreamError::Queue(r) => r.class(),
            UpstreamError::DeadlineExceeded => ErrorClass::Deadline,
            UpstreamError::Connect { .. } => ErrorClass::UpstreamConnect,
            UpstreamError::Timeout { .. } => ErrorClass::UpstreamTimeout,
            UpstreamError::Protocol { .. } => ErrorClass::UpstreamProtocol,
        }
    }

    /// Names the server in the message.
    pub(crate) fn at(self, addr: &ListenAddr) -> Self {
        let name = addr.to_string();
        match self {
            UpstreamError::Connect { source, .. } => UpstreamError::Connect {
                server: name,
                source,
            },
            UpstreamError::Timeout { phase, .. } => UpstreamError::Timeout {
                server: name,
                phase,
            },
            UpstreamError::Protocol { message, .. } => UpstreamError::Protocol {
                server: name,
                message,
            },
            other => other,
        }
    }

    pub(crate) fn timeout(phase: &'static str) -> Self {
        UpstreamError::Timeout {
            server: String::new(),
            phase,
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        UpstreamError::Protocol {
            server: String::new(),
            message: message.into(),
        }
    }
}
