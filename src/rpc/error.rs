//! The one place where errors become gRPC status codes, and status codes become errors.
//!
//! Library errors (domain, evaluation, answerer) convert into a [`ServiceError`], whose variant
//! decides the code; a `tonic::Status` received from a peer converts back, so a worker's refusal
//! keeps its meaning across the coordinator. `tests` below round-trips every variant.

use tonic::{Code, Status};

use crate::answerer::AnswerError;
use crate::domain::DomainError;
use crate::eval::EvalError;
use crate::text::ParseError;

/// A service-level error: its variant is its gRPC code, its text the message a person reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or asks for something impossible; retrying will not help.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// No credentials, or credentials nobody was given.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the right to this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bounded queue or cap is full; retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The service (or every worker) cannot serve right now; retry elsewhere or later.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The system is not in a state to serve this (no model loaded, wrong domain for a worker).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Cancelled(String),
    /// A bug or an unexpected failure on our side.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::Cancelled(_) => Code::Cancelled,
            ServiceError::Internal(_) => Code::Internal,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ServiceError::InvalidArgument(m)
            | ServiceError::NotFound(m)
            | ServiceError::Unauthenticated(m)
            | ServiceError::PermissionDenied(m)
            | ServiceError::ResourceExhausted(m)
            | ServiceError::Unavailable(m)
            | ServiceError::DeadlineExceeded(m)
            | ServiceError::FailedPrecondition(m)
            | ServiceError::Cancelled(m)
            | ServiceError::Internal(m) => m,
        }
    }

    /// Whether another attempt (on another worker, or later) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServiceError::ResourceExhausted(_)
                | ServiceError::Unavailable(_)
                | ServiceError::Cancelled(_)
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument(message.into())
    }
}

/// Longest message a status carries: error messages quote input (a name, a line of facts), and a
/// status travels in HTTP/2 headers, which clients cap (a 20 000-character domain name used to
/// overflow them). Longer messages are cut at a character boundary and marked.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        Status::new(e.code(), truncate_message(e.message()))
    }
}

fn truncate_message(message: &str) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_STATUS_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &message[..end], message.len())
}

impl From<Status> for ServiceError {
    fn from(s: Status) -> ServiceError {
        let m = s.message().to_string();
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange => ServiceError::InvalidArgument(m),
            Code::NotFound => ServiceError::NotFound(m),
            Code::Unauthenticated => ServiceError::Unauthenticated(m),
            Code::PermissionDenied => ServiceError::PermissionDenied(m),
            Code::ResourceExhausted => ServiceError::ResourceExhausted(m),
            // Transport failures arrive as Unavailable or Unknown: both mean "try elsewhere".
            Code::Unavailable | Code::Unknown | Code::Aborted => ServiceError::Unavailable(m),
            Code::DeadlineExceeded => ServiceError::DeadlineExceeded(m),
            Code::FailedPrecondition => ServiceError::FailedPrecondition(m),
            Code::Cancelled => ServiceError::Cancelled(m),
            _ => ServiceError::Internal(if m.is_empty() {
                format!("{:?}", s.code())
            } else {
                m
            }),
        }
    }
}

impl From<DomainError> for ServiceError {
    fn from(e: DomainError) -> Self {
        ServiceError::InvalidArgument(e.to_string())
    }
}

impl From<ParseError> for ServiceError {
    fn from(e: ParseError) -> Self {
        ServiceError::InvalidArgument(e.to_string())
    }
}

impl From<EvalError> for ServiceError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::NoAnswerer(_) => ServiceError::FailedPrecondition(e.to_string()),
            _ => ServiceError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<AnswerError> for ServiceError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Unavailable(m) => ServiceError::Unavailable(m),
            AnswerError::Overloaded(m) => ServiceError::ResourceExhausted(m),
            AnswerError::Rejected(m) => ServiceError::InvalidArgument(m),
            AnswerError::Internal(m) => ServiceError::Internal(m),
        }
    }
}

impl From<ServiceError> for AnswerError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::ResourceExhausted(m) => AnswerError::Overloaded(m),
            ServiceError::InvalidArgument(m) | ServiceError::FailedPrecondition(m) => {
                AnswerError::Rejected(m)
            }
            ServiceError::Internal(m) => AnswerError::Internal(m),
            other => AnswerError::Unavailable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ServiceError> {
        vec![
            ServiceError::InvalidArgument("bad text at column 3".into()),
            ServiceError::NotFound("no tree t-9".into()),
            ServiceError::Unauthenticated("no token".into()),
            ServiceError::PermissionDenied("may not ask".into()),
            ServiceError::ResourceExhausted("queue full".into()),
            ServiceError::Unavailable("no workers".into()),
            ServiceError::DeadlineExceeded("too slow".into()),
            ServiceError::FailedPrecondition("no model loaded".into()),
            ServiceError::Cancelled("client went away".into()),
            ServiceError::Internal("bug".into()),
        ]
    }

    #[test]
    fn every_error_round_trips_through_a_status() {
        for e in all() {
            let status: Status = e.clone().into();
            assert_eq!(status.code(), e.code());
            assert_eq!(status.message(), e.message());
            assert_eq!(ServiceError::from(status), e);
        }
    }

    #[test]
    fn answerer_errors_keep_their_meaning_across_the_wire() {
        for a in [
            AnswerError::Unavailable("down".into()),
            AnswerError::Overloaded("full".into()),
            AnswerError::Rejected("bad".into()),
            AnswerError::Internal("oops".into()),
        ] {
            let status: Status = ServiceError::from(a.clone()).into();
            assert_eq!(AnswerError::from(ServiceError::from(status)), a);
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = format!("unknown domain {:?}", "é".repeat(20_000));
        let status: Status = ServiceError::invalid(long.clone()).into();
        assert!(status.message().len() < MAX_STATUS_MESSAGE_BYTES + 64);
        assert!(status
            .message()
            .ends_with(&format!("({} bytes in all)", long.len())));
        assert!(long.starts_with(status.message().split('…').next().unwrap()));
        let short: Status = ServiceError::invalid("bad").into();
        assert_eq!(short.message(), "bad");
    }

    #[test]
    fn request_problems_are_invalid_argument() {
        let e: ServiceError = "nope"
            .parse::<crate::domain::DomainKind>()
            .unwrap_err()
            .into();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("unknown domain"));
        let e: ServiceError = EvalError::ExactNotWellFounded("shortest-path").into();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(!e.is_retryable());
        assert!(ServiceError::ResourceExhausted(String::new()).is_retryable());
    }
}
