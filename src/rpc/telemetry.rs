//! Distributed-tracing context on the wire (telemetry, as opposed to the HCH tree's trace): a
//! W3C `traceparent` header (`00-<trace id>-<span id>-01`) on every call, so that a tree's spans on
//! the coordinator and its workers share one trace id, and `hch-trees`, the ids of the trees a
//! worker call serves (a batch mixes trees).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_junk() {
        let v = format(0xabc, 0x12);
        assert_eq!(v, "00-00000000000000000000000000000abc-0000000000000012-01");
        assert_eq!(parse(&v), Some((0xabc, 0x12)));
        for bad in [
            "",
            "00-abc-12-01",
            "00-00000000000000000000000000000000-0000000000000012-01",
            "zz",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_ne!(fresh_id(), fresh_id());
    }
}
