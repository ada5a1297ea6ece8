//! Output streams as Server-Sent Events: `stdout`/`stderr` events carry JSON strings, `exit` ends.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream as FuturesStream;
use tartarus_core::{OutputEvent, Stream};
use tokio::sync::mpsc;

/// Turns byte chunks into text without breaking a UTF-8 sequence split across chunks.
#[derive(Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Text for `bytes`, holding back an incomplete trailing sequence for the next call;
    /// invalid bytes become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut kept = Vec::new();
        let mut chunks = self.pending.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            text.push_str(chunk.valid());
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            // Only the very end may be the start of a sequence still to come.
            let at_end = chunks.peek().is_none();
            if at_end && invalid.len() < 4 && std::str::from_utf8(invalid).is_err() && could_continue(invalid) {
                kept.extend_from_slice(invalid);
            } else {
                text.push('\u{fffd}');
            }
        }
        self.pending = kept;
        text
    }
}

/// Whether `bytes` is a proper prefix of some UTF-8 sequence (a lead byte and its continuations so far).
fn could_continue(bytes: &[u8]) -> bool {
    let need = match bytes[0] {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return false,
    };
    bytes.len() < need && bytes[1..].iter().all(|b| (0x80..=0xbf).contains(b))
}

/// An SSE response for an output stream.
pub fn sse(rx: mpsc::Receiver<OutputEvent>) -> Sse<impl FuturesStream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold(
        (rx, Utf8Carry::default(), Utf8Carry::default()),
        |(mut rx, mut out, mut err)| async move {
            let ev = rx.recv().await?;
            let event = match ev {
                OutputEvent::Output(s, bytes) => {
                    let (name, carry) = match s {
                        Stream::Stdout => ("stdout", &mut out),
                        Stream::Stderr => ("stderr", &mut err),
                    };
                    Event::default().event(name).data(serde_json::to_string(&carry.push(&bytes)).expect("string"))
                }
                OutputEvent::Exit(info) => {
                    Event::default().event("exit").data(serde_json::to_string(&info).expect("exit info"))
                }
            };
            Some((Ok(event), (rx, out, err)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sequences_are_kept_whole() {
        let mut c = Utf8Carry::default();
        let snow = "☃".as_bytes();
        assert_eq!(c.push(&[b'a', snow[0]]), "a");
        assert_eq!(c.push(&snow[1..]), "☃");
        assert_eq!(c.push(&[0xff, b'b']), "\u{fffd}b");
        // An invalid byte and an incomplete tail in the same chunk: only the tail waits.
        assert_eq!(c.push(&[0xff, b'a', snow[0], snow[1]]), "\u{fffd}a");
        assert_eq!(c.push(&snow[2..]), "☃");
    }
}
