//! The wire: generated gRPC code for `proto/hch/v1/hch.proto` ([`pb`]) and the one place where
//! wire messages become library types and back.
//!
//! - [`coordinator`] and [`worker`]: each service's requests and responses as library types, each
//!   with its `encode` and `decode` side by side; decoders enforce the [`limits`].
//! - [`error`]: the one mapping between errors and gRPC status codes; [`codec`]: protobuf, with
//!   undecodable messages reported as the sender's error.
//! - [`telemetry`]: distributed-tracing context in request metadata.
//!
//! The rest of the crate touches [`pb`] only to name the generated clients and service traits:
//! handlers decode, do the work and encode; clients encode, call and decode.

pub mod codec;
pub mod coordinator;
pub mod error;
pub mod telemetry;
pub mod worker;

pub use error::ServiceError;

/// Generated messages, clients and servers (package `hch.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("hch.v1");

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/hch_descriptor.bin"));
}

use std::time::Duration;

/// Limits on what a request may carry. Every bound has a name.
pub mod limits {
    /// Largest instance text accepted (bytes). Full-size instances are under 2 KiB.
    pub const MAX_FACTS_BYTES: usize = 64 * 1024;
    /// Largest question text accepted (bytes).
    pub const MAX_QUESTION_BYTES: usize = 1024;
    /// Most items in one worker Answer call.
    pub const MAX_BATCH_ITEMS: usize = 8192;
    /// Most distinct instances in one worker Answer call.
    pub const MAX_BATCH_INSTANCES: usize = 1024;
    /// Largest gRPC message either service accepts.
    pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

    use std::fmt::Display;

    use super::ServiceError;

    /// The one check of a text field's size: INVALID_ARGUMENT naming `what` (rendered only when
    /// the check fails, so `format_args!` costs nothing on the way through).
    pub fn check_bytes(what: impl Display, text: &str, limit: usize) -> Result<(), ServiceError> {
        if text.len() > limit {
            return Err(ServiceError::invalid(format!(
                "{what} is {} bytes; the limit is {limit}",
                text.len()
            )));
        }
        Ok(())
    }

    /// The one check of a repeated field's length: INVALID_ARGUMENT naming `what`.
    pub fn check_count(what: &str, count: usize, limit: usize) -> Result<(), ServiceError> {
        if count > limit {
            return Err(ServiceError::invalid(format!(
                "{count} {what} in one call; the limit is {limit}"
            )));
        }
        Ok(())
    }
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, unit one of H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline a client set on a request, if any.
pub fn request_timeout<T>(request: &tonic::Request<T>) -> Option<Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
