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
    /// Text for `bytes`, holding back an incomplete trailing sequence for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
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
    }
}
