//! The access log's own writer: lines are appended to a shared buffer on the request path
//! and written to stdout in batches by one thread, at most `FLUSH_EVERY` after they were
//! logged (like nginx's `access_log … buffer= flush=`). A request costs an append under an
//! uncontended lock; the writer thread is woken once per batch, not once per line.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// How long a line may wait before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Past this many buffered bytes the writer is woken without waiting for `FLUSH_EVERY`.
const WAKE_AT_BYTES: usize = 256 * 1024;
/// Past this many buffered bytes (stdout stuck) the request that logs writes the batch itself:
/// back-pressure instead of unbounded memory, as the tracing writer does with `lossy(false)`.
const BLOCK_AT_BYTES: usize = 16 * 1024 * 1024;

/// Buffered access lines and the thread that writes them.
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    lines: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Serialises writes to stdout so batches never interleave.
    out: Mutex<std::io::Stdout>,
}

impl Shared {
    /// Takes whatever is buffered and writes it.
    fn write_pending(&self) {
        let batch = std::mem::take(&mut *self.lines.lock());
        if batch.is_empty() {
            return;
        }
        let out = self.out.lock();
        let mut out = out.lock();
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }
}

impl AccessLog {
    /// Starts the writer thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            lines: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            out: Mutex::new(std::io::stdout()),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("portcullis-access-log".into())
            .spawn(move || loop {
                {
                    let mut lines = worker.lines.lock();
                    while lines.is_empty() {
                        worker.wake.wait(&mut lines);
                    }
                    // Gather more lines for a while (unless there is plenty already).
                    if lines.len() < WAKE_AT_BYTES {
                        worker.wake.wait_for(&mut lines, FLUSH_EVERY);
                    }
                }
                worker.write_pending();
            })?;
        Ok(AccessLog { shared })
    }

    /// Queues one line (with its newline).
    pub fn append(&self, line: &[u8]) {
        let mut lines = self.shared.lines.lock();
        let was_empty = lines.is_empty();
        lines.extend_from_slice(line);
        let len = lines.len();
        drop(lines);
        if len >= BLOCK_AT_BYTES {
            self.shared.write_pending();
        } else if was_empty || len >= WAKE_AT_BYTES {
            self.shared.wake.notify_one();
        }
    }

    /// Writes every buffered line now (at exit).
    pub fn flush(&self) {
        self.shared.write_pending();
    }
}
