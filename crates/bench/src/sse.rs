//! Incremental Server-Sent-Events parser (the `text/event-stream` framing OpenAI-compatible
//! servers stream with). Bytes arrive in arbitrary network chunks; an event is complete at
//! a blank line. Only `data:` fields matter here; comments (`:`), `event:`, `id:` and
//! `retry:` lines are ignored. Lines may end in `\n` or `\r\n`.

/// Feeds bytes, yields the `data` payload of each complete event.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes not yet forming a whole line.
    pending: Vec<u8>,
    /// `data:` lines of the event being read, joined by "\n" as the SSE spec says.
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns the payloads of the events they complete. A payload that is
    /// not valid UTF-8 is returned lossily converted (the JSON parse will then report it).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(off) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + off;
            let mut line = &self.pending[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if let Some(d) = self.data.take() {
                    events.push(d);
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                let text = String::from_utf8_lossy(rest);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&text);
                    }
                    None => self.data = Some(text.into_owned()),
                }
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        events
    }

    /// Ends the stream: an event not closed by a blank line is still delivered (some servers
    /// close the connection right after the last `data:` line).
    pub fn finish(&mut self) -> Option<String> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            // A final line without its newline.
            self.feed(&rest);
            if !self.pending.is_empty() {
                let line = std::mem::take(&mut self.pending);
                let line = line.strip_suffix(b"\r").unwrap_or(&line).to_vec();
                if let Some(rest) = line.strip_prefix(b"data:") {
                    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                    let text = String::from_utf8_lossy(rest);
                    match &mut self.data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(&text);
                        }
                        None => self.data = Some(text.into_owned()),
                    }
                }
            }
        }
        self.data.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere() {
        let stream = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata:[DONE]\n\n";
        // Every split point of the byte stream gives the same events.
        for cut in 0..stream.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&stream[..cut]);
            got.extend(p.feed(&stream[cut..]));
            assert_eq!(
                got,
                vec!["{\"a\":1}", "{\"b\":\n2}", "[DONE]"],
                "cut at {cut}"
            );
            assert_eq!(p.finish(), None);
        }
        // Byte by byte.
        let mut p = SseParser::new();
        let got: Vec<String> = stream.iter().flat_map(|b| p.feed(&[*b])).collect();
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn unterminated_last_event_is_delivered_on_finish() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: {\"x\":1}\n\ndata: tail").len() == 1);
        assert_eq!(p.finish().as_deref(), Some("tail"));
        let mut p = SseParser::new();
        assert!(p.feed(b"data: one\n").is_empty());
        assert_eq!(p.finish().as_deref(), Some("one"));
    }
}
