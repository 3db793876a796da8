//! The error contract: every answer weir makes itself, rather than the app, comes from
//! [`Rejection::respond`] (or [`Rejection::to_http1`] for the framing gate's raw answers),
//! with its status, `x-weir-error: <class>`, Retry-After where a retry can help,
//! `X-Request-ID`, and a body: JSON when the client accepts JSON, a short text otherwise.
//! The classes, their statuses and Retry-After are defined once in weir-errors.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use weir_errors::ErrorClass;
use weir_pool::{DispatchError, ResponseBody};

use crate::access_log::json_string;

/// A request ended by weir.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The class, which gives the status (weir-errors).
    pub class: ErrorClass,
    /// Seconds for Retry-After (only on a class that carries it).
    pub retry_after: Option<u64>,
    /// One sentence for the text body.
    pub message: String,
    /// Close the connection after answering.
    pub close: bool,
    /// The configured status of a class whose status is configurable (a limit zone's
    /// `status`); `None`: the class's own.
    pub status: Option<StatusCode>,
    /// More headers for the answer (a limit's `RateLimit-Policy` and `RateLimit`).
    pub headers: Vec<(http::header::HeaderName, HeaderValue)>,
}

impl Rejection {
    /// Whether the queue refused the request (503 `queue-full` or `queue-timeout`): the
    /// client's retry of it soon after is not new demand (`[queue] rate_overload`).
    pub fn is_queue_refusal(&self) -> bool {
        matches!(self.class, ErrorClass::QueueFull | ErrorClass::QueueTimeout)
    }

    /// A rejection of `class`, without Retry-After (see [`Rejection::retry`]).
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Rejection {
            class,
            retry_after: None,
            message: message.into(),
            close: false,
            status: None,
            headers: Vec::new(),
        }
    }

    /// The status of its answer: the class's, or the configured one where the class
    /// allows it (weir-errors' `status_or`).
    pub fn status(&self) -> StatusCode {
        self.class.status_or(self.status)
    }

    /// Retry-After: `seconds`, when the class carries it (a refusal about load).
    pub fn retry(mut self, seconds: u64) -> Self {
        self.retry_after = self.class.retry_after().then_some(seconds);
        self
    }

    /// The connection is closed after this answer (the request's framing cannot be
    /// trusted, so neither can whatever follows it on the connection).
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The one mapping from a dispatch failure to what the client sees.
    /// A refusal at arrival brings its own Retry-After (from the estimated wait); the
    /// others get `retry_after` (`[queue] retry_after`).
    pub fn from_dispatch(e: &DispatchError, retry_after: u64) -> Self {
        Rejection::new(e.class(), e.to_string()).retry(e.retry_after().unwrap_or(retry_after))
    }

    /// The one mapping from an upstream failure to what the client sees (Retry-After as
    /// for [`Rejection::from_dispatch`]).
    pub fn from_upstream(e: &weir_upstream::UpstreamError, retry_after: u64) -> Self {
        Rejection::new(e.class(), e.to_string()).retry(e.retry_after().unwrap_or(retry_after))
    }

    /// The response.
    pub fn respond(&self, request_id: &str, wants_json: bool) -> Response<ResponseBody> {
        let (ctype, mut body) = self.body(request_id, wants_json);
        if self.class == ErrorClass::ClientClosed {
            // The client has gone (NGINX's 499): nothing is sent to nobody.
            body.clear();
        }
        let mut r = Response::new(ResponseBody::full(body));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(
            "x-weir-error",
            HeaderValue::from_static(self.class.as_str()),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-request-id", v);
        }
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        r
    }

    /// The same answer as raw HTTP/1.1 bytes, for a refusal made before hyper parsed the
    /// request (the framing gate); the connection is closed after it.
    pub fn to_http1(&self, request_id: &str, wants_json: bool, head_only: bool) -> Vec<u8> {
        let (ctype, body) = self.body(request_id, wants_json);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {ctype}\r\nx-weir-error: {}\r\n",
            self.status().as_u16(),
            self.status().canonical_reason().unwrap_or(""),
            self.class
        );
        if crate::request_id::is_well_formed(request_id.as_bytes()) {
            out.push_str(&format!("x-request-id: {request_id}\r\n"));
        }
        if let Some(s) = self.retry_after {
            out.push_str(&format!("retry-after: {s}\r\n"));
        }
        out.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        if !head_only {
            out.push_str(&body);
        }
        out.into_bytes()
    }

    fn body(&self, request_id: &str, wants_json: bool) -> (&'static str, String) {
        if wants_json {
            (
                "application/json",
                format!(
                    "{{\"error\":\"{}\",\"status\":{},\"request_id\":\"{}\",\"message\":{}}}\n",
                    self.class,
                    self.status().as_u16(),
                    request_id,
                    json_string(&self.message)
                ),
            )
        } else {
            (
                "text/plain; charset=utf-8",
                format!(
                    "{} {}: {} (request {})\n",
                    self.status().as_u16(),
                    self.class,
                    self.message,
                    request_id
                ),
            )
        }
    }
}

/// Does an Accept header ask for JSON (and not prefer HTML)?
pub fn wants_json(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| {
        let a = String::from_utf8_lossy(a);
        a.contains("application/json") || (a.contains("+json") && !a.contains("text/html"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_renders() {
        let r = Rejection::from_dispatch(&DispatchError::QueueFull { max: 3 }, 2);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let resp = r.respond("abc", true);
        assert_eq!(resp.headers()["x-weir-error"], "queue-full");
        assert_eq!(resp.headers()["retry-after"], "2");
        // Refused at arrival: Retry-After from the estimate, not the configured one.
        let predicted = weir_queue::QueueRefusal::Predicted {
            expected: std::time::Duration::from_millis(3200),
            budget: weir_queue::Budget::Target(std::time::Duration::from_millis(60)),
        };
        let r = Rejection::from_dispatch(&DispatchError::from(predicted), 1);
        assert_eq!(r.class, weir_errors::ErrorClass::QueueFull);
        assert_eq!(r.retry_after, Some(4));
        let r = Rejection::from_dispatch(&DispatchError::WorkerDied, 1);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(r.retry_after.is_none());
        assert!(wants_json(Some(b"application/json")));
        assert!(!wants_json(Some(b"text/html,*/*")));
        assert_eq!(json_string("a\"b\n"), "\"a\\\"b\\u000a\"");
    }
}
