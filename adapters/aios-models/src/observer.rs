//! The streaming observer: where deltas go while a streamed answer is assembled.

/// A piece of a streamed answer, in the order the provider sent it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamDelta {
    /// More text of the answer.
    Text(String),
    /// A piece of a tool call. Pieces with the same `index` belong to one call: the first
    /// usually carries the `id` and `name`, the following ones more `arguments` text (a JSON
    /// document split anywhere).
    ToolCall {
        /// The position of the call in the answer.
        index: usize,
        /// The provider's id of the call, when this piece carries it.
        id: Option<String>,
        /// The tool's name (as offered in the request), when this piece carries it.
        name: Option<String>,
        /// More of the arguments' JSON text.
        arguments: String,
    },
}

/// Receives the deltas of a streamed completion as they arrive.
///
/// Contract: called from inside the completion future, in stream order, never concurrently
/// for one call; it should return quickly (hand the delta on, do not block). The response the
/// completion returns is assembled from the same deltas, so an observer never needs to
/// reassemble it. Closures `Fn(&StreamDelta) + Send + Sync` are observers.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use aios_models::{StreamDelta, StreamObserver};
/// let seen = Arc::new(Mutex::new(String::new()));
/// let sink = seen.clone();
/// let observer = move |d: &StreamDelta| {
///     if let StreamDelta::Text(t) = d {
///         sink.lock().unwrap().push_str(t);
///     }
/// };
/// observer.on_delta(&StreamDelta::Text("hel".into()));
/// observer.on_delta(&StreamDelta::Text("lo".into()));
/// assert_eq!(*seen.lock().unwrap(), "hello");
/// ```
pub trait StreamObserver: Send + Sync {
    /// One delta.
    fn on_delta(&self, delta: &StreamDelta);
}

impl<F> StreamObserver for F
where
    F: Fn(&StreamDelta) + Send + Sync,
{
    fn on_delta(&self, delta: &StreamDelta) {
        self(delta)
    }
}

/// Forwards to an optional observer.
pub(crate) fn emit(observer: Option<&dyn StreamObserver>, delta: StreamDelta) {
    if let Some(o) = observer {
        o.on_delta(&delta);
    }
}
