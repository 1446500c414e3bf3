//! Distributed-tracing context on the wire (telemetry, as opposed to the HCH tree's trace): a
//! W3C `traceparent` header (`00-<trace id>-<parent span id>-<flags>`) on every call, so that a
//! tree's spans on the coordinator and its workers share one trace id and link to their parents,
//! and `hch-trees`, the ids of the trees a worker call serves (a batch mixes trees).
//!
//! The spans themselves are made and exported by [`crate::otel`]; this module only reads and
//! writes the header, so that the wire format does not depend on whether export is on.

pub const TRACEPARENT: &str = "traceparent";
pub const TREES: &str = "hch-trees";

/// Where a span sits in a distributed trace: the trace, the span, and whether the trace is
/// sampled (recorded and exported). What `traceparent` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// Never zero (W3C: an all-zero id is invalid).
    pub trace_id: u128,
    /// Never zero.
    pub span_id: u64,
    /// The sampled flag: whoever made this span records it, and its children should too.
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, not sampled: a root whose spans nobody records (export off), yet whose id
    /// still ties log lines together.
    pub fn fresh() -> Self {
        Self {
            trace_id: fresh_id(),
            span_id: fresh_span_id(),
            sampled: false,
        }
    }

    /// A new span id in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: fresh_span_id(),
            ..*self
        }
    }

    /// The `traceparent` header value.
    pub fn format(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.sampled as u8
        )
    }

    /// A `traceparent` value, if it is well formed (version 00, or a later version read as 00,
    /// as W3C asks of parsers).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        if version.len() != 2
            || !hex(version)
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
            || !hex(trace)
            || !hex(span)
            || !hex(flags)
            // Version 00 has exactly four fields; later versions may append more.
            || (version == "00" && parts.next().is_some())
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|&s| s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace id as logs and the viewer show it (32 hex digits, as tracing UIs search).
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
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

fn fresh_span_id() -> u64 {
    (fresh_id() as u64).max(1)
}

/// Reads the trace context of an incoming request, and the trees it serves (`hch-trees`).
pub fn of_request<T>(request: &tonic::Request<T>) -> (Option<TraceContext>, String) {
    let md = request.metadata();
    let parent = md
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let trees = md
        .get(TREES)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (parent, trees)
}

/// Writes `context` as the `traceparent` of an outgoing request.
pub fn attach<T>(request: &mut tonic::Request<T>, context: &TraceContext) {
    if let Ok(v) = context.format().parse() {
        request.metadata_mut().insert(TRACEPARENT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_junk() {
        let c = TraceContext {
            trace_id: 0xabc,
            span_id: 0x12,
            sampled: true,
        };
        let v = c.format();
        assert_eq!(v, "00-00000000000000000000000000000abc-0000000000000012-01");
        assert_eq!(TraceContext::parse(&v), Some(c));
        let unsampled = TraceContext {
            sampled: false,
            ..c
        };
        assert_eq!(
            TraceContext::parse(&unsampled.format()),
            Some(unsampled),
            "the sampled flag is carried"
        );
        // A later version with more fields is read as version 00.
        assert_eq!(
            TraceContext::parse("01-00000000000000000000000000000abc-0000000000000012-01-ext"),
            Some(c)
        );
        for bad in [
            "",
            "zz",
            "00-abc-12-01",
            // Zero ids are invalid.
            "00-00000000000000000000000000000000-0000000000000012-01",
            "00-00000000000000000000000000000abc-0000000000000000-01",
            // Version ff is forbidden; 00 has exactly four fields.
            "ff-00000000000000000000000000000abc-0000000000000012-01",
            "00-00000000000000000000000000000abc-0000000000000012-01-ext",
            // Signs and non-hex digits that from_str_radix would accept or choke on.
            "00-+0000000000000000000000000000abc-0000000000000012-01",
            "00-00000000000000000000000000000abc-0000000000000012-0g",
            "00-00000000000000000000000000000abc-0000000000000012-1",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        assert_ne!(fresh_id(), fresh_id());
        let child = c.child();
        assert_eq!((child.trace_id, child.sampled), (c.trace_id, c.sampled));
        assert_ne!(child.span_id, c.span_id);
    }
}
