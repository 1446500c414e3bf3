//! The wire: generated gRPC code for `proto/hch/v1/hch.proto` and the conversions between wire
//! messages and library types. The rest of the crate uses [`pb`] only through this module's
//! helpers and the service traits.

pub mod error;

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

use crate::domain::{print_reply, Domain};
use crate::eval::trace::{AnsweredBy, Exhausted, Trace};

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
}

pub fn exhausted_name(e: Option<Exhausted>) -> String {
    e.map(|e| e.name().to_string()).unwrap_or_default()
}

pub fn by_name(by: AnsweredBy) -> String {
    by.name().to_string()
}

/// A trace on the wire.
pub fn trace_to_pb<D: Domain>(domain: &D, tree_id: &str, trace: &Trace<D>) -> pb::Trace {
    pb::Trace {
        tree_id: tree_id.to_string(),
        domain: D::KIND.name().to_string(),
        answerer: trace.answerer.as_deref().unwrap_or("").to_string(),
        nodes: trace
            .nodes
            .iter()
            .map(|n| pb::TraceNode {
                id: n.id,
                parent: n.parent,
                depth: n.depth,
                question: domain.print_question(&n.question),
                answer: print_reply(domain, &n.answer),
                by: by_name(n.by),
                exhausted: exhausted_name(n.exhausted),
                start_us: n.start.as_micros() as u64,
                end_us: n.end.as_micros() as u64,
            })
            .collect(),
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
