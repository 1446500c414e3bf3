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

/// Trace context on the wire: a W3C `traceparent` header (`00-<trace id>-<span id>-01`) on every
/// call, so a tree's spans on the coordinator and its workers share one trace id, plus
/// `hch-trees`, the ids of the trees a worker call serves (a batch mixes trees).
pub mod trace_context {
    pub const TRACEPARENT: &str = "traceparent";
    pub const TREES: &str = "hch-trees";

    pub fn format(trace_id: u128, span_id: u64) -> String {
        format!("00-{trace_id:032x}-{span_id:016x}-01")
    }

    /// The trace and parent span ids of a `traceparent` value, if it is well formed.
    pub fn parse(value: &str) -> Option<(u128, u64)> {
        let mut parts = value.split('-');
        let (version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || parts.next().is_some() {
            return None;
        }
        let trace = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?;
        let span = u64::from_str_radix(span, 16).ok().filter(|&s| s != 0)?;
        Some((trace, span))
    }

    /// A fresh non-zero id (not cryptographic: ids only need to be unique enough to join spans).
    pub fn fresh_id() -> u128 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1);
        let mut rng = crate::rng::Rng::derived(t as u64 ^ (t >> 64) as u64, n);
        ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128).max(1)
    }

    /// Reads the trace context of an incoming request.
    pub fn of_request<T>(request: &tonic::Request<T>) -> (Option<(u128, u64)>, String) {
        let md = request.metadata();
        let parent = md
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        let trees = md
            .get(TREES)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (parent, trees)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_junk() {
        let v = trace_context::format(0xabc, 0x12);
        assert_eq!(v, "00-00000000000000000000000000000abc-0000000000000012-01");
        assert_eq!(trace_context::parse(&v), Some((0xabc, 0x12)));
        for bad in [
            "",
            "00-abc-12-01",
            "00-00000000000000000000000000000000-0000000000000012-01",
            "zz",
        ] {
            assert_eq!(trace_context::parse(bad), None, "{bad}");
        }
        assert_ne!(trace_context::fresh_id(), trace_context::fresh_id());
    }

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
