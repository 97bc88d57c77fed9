-- 5: the W3C traceparent of the span that received the event (tracing on), so that its
-- delivery attempts continue that trace, later or on another instance.
ALTER TABLE events ADD COLUMN trace_parent TEXT;
