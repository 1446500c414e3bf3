//! The finished traces a coordinator keeps for GetTrace: typed (rendered to text only when
//! read), owned by the client whose tree it was, and bounded by count and by bytes.

use std::collections::VecDeque;

use super::auth::ClientName;
use crate::eval::trace::TraceView;

/// A finished tree's trace, kept typed; `render` turns it into text on demand.
pub(super) struct StoredTrace {
    pub(super) tree_id: String,
    /// The client whose tree it was: only it may read the trace.
    pub(super) owner: ClientName,
    /// The memory it holds (its nodes, its id and this record), for the store's byte bound.
    pub(super) bytes: usize,
    pub(super) render: Box<dyn Fn() -> TraceView + Send + Sync>,
}

/// The finished traces kept for GetTrace, oldest first, bounded by count and by bytes.
#[derive(Default)]
pub(super) struct TraceStore {
    traces: VecDeque<StoredTrace>,
    bytes: usize,
}

impl TraceStore {
    /// Keeps `trace`, dropping the oldest until both bounds hold; a trace above the byte bound
    /// on its own is not kept. Returns whether it was kept.
    pub(super) fn keep(&mut self, trace: StoredTrace, max_count: usize, max_bytes: usize) -> bool {
        if trace.bytes > max_bytes || max_count == 0 {
            return false;
        }
        self.bytes += trace.bytes;
        self.traces.push_back(trace);
        while self.traces.len() > max_count || self.bytes > max_bytes {
            match self.traces.pop_front() {
                Some(old) => self.bytes -= old.bytes,
                None => break,
            }
        }
        true
    }

    /// The newest stored trace of tree `id` that `client` owns.
    pub(super) fn find(&self, id: &str, client: &ClientName) -> Option<&StoredTrace> {
        self.traces
            .iter()
            .rev()
            .find(|t| t.tree_id == id && t.owner == *client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(id: &str, bytes: usize) -> StoredTrace {
        StoredTrace {
            tree_id: id.to_string(),
            owner: None,
            bytes,
            render: Box::new(|| unreachable!("not rendered")),
        }
    }

    fn ids(store: &TraceStore) -> Vec<&str> {
        store.traces.iter().map(|t| t.tree_id.as_str()).collect()
    }

    #[test]
    fn traces_are_bounded_by_count_and_by_bytes() {
        let mut store = TraceStore::default();
        for (id, bytes) in [("a", 40), ("b", 40), ("c", 40)] {
            assert!(store.keep(trace(id, bytes), 10, 100));
        }
        // 120 bytes held by three: the oldest went.
        assert_eq!(ids(&store), ["b", "c"]);
        assert_eq!(store.bytes, 80);
        // One large trace pushes out as many as it takes.
        assert!(store.keep(trace("d", 90), 10, 100));
        assert_eq!(ids(&store), ["d"]);
        // A trace larger than the whole bound is not kept, and costs the others nothing.
        assert!(!store.keep(trace("e", 101), 10, 100));
        assert_eq!(ids(&store), ["d"]);
        // The count bound.
        for id in ["f", "g", "h"] {
            store.keep(trace(id, 1), 2, 100);
        }
        assert_eq!(ids(&store), ["g", "h"]);
        assert_eq!(store.bytes, 2);
    }
}
