//! The access log's own writer: lines are appended to a shared buffer on the request path
//! and written to stdout in batches by one thread, at most `FLUSH_EVERY` after they were
//! logged (like nginx's `access_log … buffer= flush=`). A request costs an append under an
//! uncontended lock; the writer thread is woken once per batch, not once per line. When stdout
//! cannot keep up, lines are dropped and counted rather than making a request wait (SPEC §5).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// How long a line may wait before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Past this many buffered bytes the writer is woken without waiting for `FLUSH_EVERY`.
const WAKE_AT_BYTES: usize = 256 * 1024;
/// Past this many buffered bytes (stdout stuck, or slower than the traffic) new lines are
/// dropped and counted: a request never waits on the log, and memory stays bounded.
const DROP_AT_BYTES: usize = 16 * 1024 * 1024;

/// Buffered access lines and the thread that writes them.
pub(super) struct AccessLog {
    shared: Arc<Shared>,
    /// Buffered bytes past which lines are dropped.
    drop_at: usize,
}

type Output = Box<dyn Write + Send>;

struct Shared {
    lines: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Serialises writes so batches never interleave.
    out: Mutex<Output>,
    /// Lines dropped because the buffer was full.
    dropped: AtomicU64,
}

impl Shared {
    /// Takes whatever is buffered and writes it. The output is locked first, so two
    /// writers (the thread and a final flush) keep the lines in order.
    fn write_pending(&self) {
        let mut out = self.out.lock();
        let batch = std::mem::take(&mut *self.lines.lock());
        if batch.is_empty() {
            return;
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }
}

impl AccessLog {
    /// Starts the writer thread on stdout.
    pub(super) fn start() -> std::io::Result<Self> {
        Self::start_on(Box::new(std::io::stdout()), DROP_AT_BYTES)
    }

    /// Starts the writer thread on `out`, dropping lines past `drop_at` buffered bytes.
    fn start_on(out: Output, drop_at: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            lines: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            out: Mutex::new(out),
            dropped: AtomicU64::new(0),
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
        Ok(AccessLog { shared, drop_at })
    }

    /// Queues one line (with its newline), or drops and counts it when the buffer is full.
    pub(super) fn append(&self, line: &[u8]) {
        let mut lines = self.shared.lines.lock();
        if lines.len() + line.len() > self.drop_at {
            drop(lines);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.wake.notify_one();
            return;
        }
        let was_empty = lines.is_empty();
        lines.extend_from_slice(line);
        let len = lines.len();
        drop(lines);
        if was_empty || len >= WAKE_AT_BYTES {
            self.shared.wake.notify_one();
        }
    }

    /// Lines dropped so far because stdout could not keep up.
    pub(super) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes every buffered line now (at exit).
    pub(super) fn flush(&self) {
        self.shared.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer stuck like a full pipe nobody reads: its first write never returns.
    struct Stuck(Mutex<Option<mpsc::Receiver<()>>>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            if let Some(never) = self.0.lock().take() {
                let _ = never.recv();
            }
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_drops_and_counts_lines_instead_of_blocking() {
        let (_keep_stuck, never) = mpsc::channel();
        let log = AccessLog::start_on(Box::new(Stuck(Mutex::new(Some(never)))), 1024).unwrap();
        let line = [b'x'; 100];
        // The writer takes the first batch and hangs in write; the rest fill the buffer. This
        // thread must return from every append (a blocking append would hang the test).
        for _ in 0..1000 {
            log.append(&line);
        }
        assert!(
            log.dropped() >= 1000 - 2 * 1024 / 100,
            "dropped {}",
            log.dropped()
        );
        assert!(log.shared.lines.lock().len() <= 1024);
    }

    #[test]
    fn lines_are_written_when_stdout_keeps_up() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let log = AccessLog::start_on(Box::new(sink.clone()), 1024).unwrap();
        log.append(b"one\n");
        log.append(b"two\n");
        log.flush();
        assert_eq!(&*sink.0.lock(), b"one\ntwo\n");
        assert_eq!(log.dropped(), 0);
    }
}
