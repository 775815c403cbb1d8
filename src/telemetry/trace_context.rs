//! W3C trace context across process boundaries: a span adopts the `traceparent` of the
//! request or message that caused it, and messages carry the current span's.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A lone `traceparent` value as a propagation carrier.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Makes `span` the child of the W3C `traceparent` of an incoming request or message, so
/// its trace continues the sender's. Call it before the span is first entered. Nothing
/// happens for a missing or malformed value, or when spans are not exported.
pub fn adopt_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let parent = TraceContextPropagator::new().extract(&Traceparent(traceparent));
    if parent.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer (export off) or for a started span.
        let _ = span.set_parent(parent);
    }
}

/// The W3C `traceparent` of the current span, for the messages it sends: the receiver's
/// span becomes its child. `None` when spans are not exported (there is no span id then).
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}
