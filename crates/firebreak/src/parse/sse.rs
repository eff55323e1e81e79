//! Finding error events in an SSE stream, incrementally, whatever the chunking.
//!
//! Like openai-python, any event whose data is a JSON object with an `error` key is an error.
//! Comment lines (`:`), `event: ping` keep-alives and non-JSON data (`[DONE]`) are ignored.

#![cfg_attr(not(feature = "classify"), allow(dead_code))]

use super::body::{ApiError, parse_error_body};

/// Longest line or event data kept while scanning; longer ones are skipped (and counted), so a
/// hostile stream cannot grow memory without bound.
pub(crate) const MAX_EVENT_BYTES: usize = 64 * 1024;

/// An incremental scanner over SSE bytes.
#[derive(Debug, Default, Clone)]
pub(crate) struct SseScanner {
    line: Vec<u8>,
    data: Vec<u8>,
    line_overflow: bool,
    data_overflow: bool,
    skipped: u64,
    events: u64,
    errors: u64,
}

impl SseScanner {
    /// A fresh scanner.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes. Returns the first error event completed within them, if any;
    /// further error events in the same bytes are counted in [`SseScanner::errors`].
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) -> Option<ApiError> {
        let mut found = None;
        // Each turn consumes at least one line terminator or the whole rest of the chunk.
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    self.push_line_part(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    if let Some(e) = self.end_line() {
                        found.get_or_insert(e);
                    }
                }
                None => {
                    self.push_line_part(chunk);
                    chunk = &[];
                }
            }
        }
        found
    }

    /// Events seen so far (dispatched by a blank line).
    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    /// Error events seen so far.
    pub(crate) fn errors(&self) -> u64 {
        self.errors
    }

    /// Lines or events skipped for being longer than [`MAX_EVENT_BYTES`].
    #[cfg(test)]
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + part.len() > MAX_EVENT_BYTES {
            self.line_overflow = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self) -> Option<ApiError> {
        if self.line_overflow {
            self.line_overflow = false;
            self.skipped += 1;
            self.data_overflow = true;
            return None;
        }
        let mut line: &[u8] = &self.line;
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let mut out = None;
        if line.is_empty() {
            out = self.dispatch();
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if !self.data_overflow {
                if self.data.len() + rest.len() + 1 > MAX_EVENT_BYTES {
                    self.data_overflow = true;
                    self.data.clear();
                } else {
                    if !self.data.is_empty() {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(rest);
                }
            }
        }
        // `:` comments, `event:`, `id:`, `retry:` lines carry no data we need.
        self.line.clear();
        out
    }

    fn dispatch(&mut self) -> Option<ApiError> {
        if self.data_overflow {
            self.data_overflow = false;
            self.data.clear();
            self.skipped += 1;
            self.events += 1;
            return None;
        }
        if self.data.is_empty() {
            return None;
        }
        self.events += 1;
        let d = &self.data;
        // Cheap filter first: only JSON objects that mention "error" are parsed.
        let out = if d.first() == Some(&b'{') && memchr::memmem::find(d, b"\"error\"").is_some() {
            match serde_json::from_slice::<serde_json::Value>(d) {
                Ok(serde_json::Value::Object(o)) if o.contains_key("error") => {
                    Some(parse_error_body(d, false))
                }
                _ => None,
            }
        } else {
            None
        };
        self.data.clear();
        self.errors += u64::from(out.is_some());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keep-alive\n\n",
        "event: ping\ndata: {}\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"error-free text\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"boom\",\"code\":\"INTERNAL\"}}\r\n\r\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn finds_the_error_event_whatever_the_chunking() {
        for size in [1, 2, 3, 7, 16, 64, STREAM.len()] {
            let mut s = SseScanner::new();
            let found: Vec<ApiError> = STREAM
                .as_bytes()
                .chunks(size)
                .filter_map(|c| s.feed(c))
                .collect();
            assert_eq!(found.len(), 1, "chunk size {size}");
            assert_eq!(found[0].message.as_deref(), Some("boom"));
            assert_eq!(found[0].code.as_deref(), Some("INTERNAL"));
            assert_eq!(s.events(), 4, "chunk size {size}");
        }
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut s = SseScanner::new();
        let e = s.feed(b"data: {\"error\":\ndata: \"overloaded\"}\n\n");
        assert_eq!(e.unwrap().kind.as_deref(), Some("overloaded"));
    }

    #[test]
    fn oversized_lines_are_skipped_not_buffered() {
        let mut s = SseScanner::new();
        let big = vec![b'x'; MAX_EVENT_BYTES * 2];
        assert!(s.feed(b"data: ").is_none());
        assert!(s.feed(&big).is_none());
        assert!(s.feed(b"\n\n").is_none());
        assert!(s.line.capacity() <= MAX_EVENT_BYTES * 2);
        assert_eq!(s.skipped(), 2);
        let e = s.feed(b"data: {\"error\":\"late\"}\n\n");
        assert!(e.is_some(), "scanning recovers after an oversized event");
    }
}
