//! An incremental decoder of server-sent events (the subset the model APIs use).

/// One event: its `event:` name, if any, and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

/// Feeds on bytes as they arrive and yields complete events. Comment lines (`: ...`, sent by
/// some routers as keep-alives) and unknown fields are skipped; an event is complete at its
/// blank line, so a stream cut inside an event yields nothing for it.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseDecoder {
    /// Decodes the events completed by `chunk`.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = std::str::from_utf8(line)
                .map_err(|_| "the event stream is not valid utf-8".to_owned())?
                .to_owned();
            start = end + 1;
            self.line(&line, &mut out);
        }
        self.buf.drain(..start);
        Ok(out)
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if !self.data.is_empty() || self.event.is_some() {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: self.data.join("\n"),
                });
                self.data.clear();
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        chunks.iter().flat_map(|c| d.push(c).unwrap()).collect()
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    #[test]
    fn events_across_chunk_boundaries() {
        let cases: Vec<(Vec<&[u8]>, Vec<SseEvent>)> = vec![
            (vec![b"data: a\n\n"], vec![ev(None, "a")]),
            (vec![b"data: a\r\n\r\n"], vec![ev(None, "a")]),
            (vec![b"da", b"ta: a\n", b"\n"], vec![ev(None, "a")]),
            (
                vec![b"event: ping\ndata: {}\n\nevent: x\ndata: 1\ndata: 2\n\n"],
                vec![ev(Some("ping"), "{}"), ev(Some("x"), "1\n2")],
            ),
            (vec![b": keep-alive\n\ndata:b\n\n"], vec![ev(None, "b")]),
            (vec![b"data: cut off"], vec![]),
            (vec![b"id: 3\nretry: 10\ndata: c\n\n"], vec![ev(None, "c")]),
            (
                vec!["data: é".as_bytes()[..7].as_ref(), &"é\n\n".as_bytes()[1..]],
                vec![ev(None, "é")],
            ),
        ];
        for (chunks, expected) in cases {
            assert_eq!(decode(&chunks), expected, "{chunks:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: \xff\n\n").is_err());
    }
}
