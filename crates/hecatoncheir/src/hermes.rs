//! Hermes — reading and following a sandbox's logs.
//!
//! The main process writes straight into `stdout.log` and `stderr.log` (through its shim),
//! so logs survive a restart of the agent and stay after the sandbox ends. Following is
//! reading both files from where we were, and waiting for more until the record says the
//! sandbox has ended; the last event is how it ended.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use tartarus_core::{ExitInfo, OutputEvent, SandboxId, Stream};
use tartarus_store::{Events, SandboxStore};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::lethe::SandboxDir;

const CHUNK: usize = 64 * 1024;

/// How often a follower looks for new output when nothing else wakes it.
const POLL: Duration = Duration::from_millis(25);

struct Tail {
    path: PathBuf,
    stream: Stream,
    offset: u64,
}

impl Tail {
    /// Sends everything written since the last call. `false` once the receiver has gone.
    async fn drain(&mut self, tx: &mpsc::Sender<OutputEvent>) -> bool {
        let Ok(mut f) = tokio::fs::File::open(&self.path).await else { return true };
        if f.seek(SeekFrom::Start(self.offset)).await.is_err() {
            return true;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            match f.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    self.offset += n as u64;
                    if tx.send(OutputEvent::Output(self.stream, buf[..n].to_vec())).await.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

/// Streams the logs of sandbox `id`. Without `follow`: what is there now, then its exit if it
/// has ended. With `follow`: everything until the sandbox ends, then its exit.
pub fn logs(
    store: std::sync::Arc<dyn SandboxStore>,
    events: Events,
    dir: SandboxDir,
    id: SandboxId,
    follow: bool,
) -> mpsc::Receiver<OutputEvent> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut tails = [
            Tail { path: dir.stdout(), stream: Stream::Stdout, offset: 0 },
            Tail { path: dir.stderr(), stream: Stream::Stderr, offset: 0 },
        ];
        let mut changes = events.subscribe();
        loop {
            // Look at the record before reading, so output written before the end is all read.
            let rec = match store.get(&id).await {
                Ok(Some(r)) => r,
                _ => return,
            };
            for t in &mut tails {
                if !t.drain(&tx).await {
                    return;
                }
            }
            if rec.state.is_terminal() {
                let _ = tx.send(OutputEvent::Exit(ExitInfo::from(&rec))).await;
                return;
            }
            if !follow {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = changes.recv() => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}
