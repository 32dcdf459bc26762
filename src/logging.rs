//! Where log lines go: an in-memory buffer that a thread of its own writes
//! to stderr in batches.
//!
//! A server that logs a line per request must not pay a syscall, or a
//! thread wake-up, per line on the worker that answers the request. Handing
//! each line over a channel to a writer thread (tracing-appender's
//! non-blocking writer) still woke that thread once per line: by `perf`, the
//! futex wakes and context switches were the largest cost berth controls on
//! a warm manifest GET. Here a line is appended to a buffer under a short
//! lock; the writer, woken by the first line of a batch, waits
//! [`FLUSH_EVERY`] (or until [`BATCH`] bytes are waiting) and writes them
//! all at once: at most two wake-ups per batch, whatever the request rate.
//!
//! Lines are never dropped: when the writer falls [`MAX_PENDING`] bytes
//! behind, loggers wait for it. Dropping the [`Guard`] writes what is left;
//! only a process killed outright (SIGKILL) loses the last lines.
//!
//! Each line starts with its time ([`Timestamp`]): the text tracing's own
//! timer prints, for less; off a terminal its fields are written by
//! [`plain_fields`], again what tracing prints, for less.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};

/// The longest a line waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Waiting bytes that wake the writer before its timer.
pub const BATCH: usize = 64 * 1024;
/// Waiting bytes past which loggers wait for the writer.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

struct Pending {
    bytes: Vec<u8>,
    closing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: a batch is ready, or the guard is closing.
    ready: Condvar,
    /// Wakes loggers waiting for room.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A logger that panicked mid-append leaves bytes, not broken state.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer the `tracing` subscriber formats into (one `write` per line).
#[derive(Clone)]
pub struct Batched {
    shared: Arc<Shared>,
}

/// Writes what is still buffered when dropped, and stops the writer thread.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out`.
pub fn batched(out: impl Write + Send + 'static) -> std::io::Result<(Batched, Guard)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            bytes: Vec::with_capacity(BATCH),
            closing: false,
        }),
        ready: Condvar::new(),
        drained: Condvar::new(),
    });
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("berth-log".into())
        .spawn(move || write_batches(&writer, out))?;
    Ok((
        Batched {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::with_capacity(BATCH);
    loop {
        let closing = {
            let mut pending = shared.lock();
            // Idle: sleep until the first line (no timer ticks meanwhile).
            while pending.bytes.is_empty() && !pending.closing {
                pending = shared
                    .ready
                    .wait(pending)
                    .unwrap_or_else(|e| e.into_inner());
            }
            // Then give the batch until its timer, or until it is full.
            if pending.bytes.len() < BATCH && !pending.closing {
                pending = shared
                    .ready
                    .wait_timeout(pending, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.bytes, &mut spare);
            shared.drained.notify_all();
            pending.closing
        };
        if !spare.is_empty() {
            // Nowhere to report a failing stderr; the lines are lost, the
            // server goes on.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
        }
        if closing && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

impl Batched {
    fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= MAX_PENDING && !pending.closing {
            pending = self
                .shared
                .drained
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        // The writer sleeps until a first line starts a batch, and is woken
        // again only if the batch fills before its timer.
        if first || pending.bytes.len() >= BATCH {
            self.shared.ready.notify_one();
        }
    }
}

impl Write for &Batched {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = &'a Batched;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The time that starts each log line, as tracing-subscriber's default
/// timer writes it (RFC 3339 in UTC, to the microsecond:
/// `2026-12-05T22:44:53.172318Z`), with the date and the time of day
/// formatted once a second on each thread instead of on every line: on a
/// warm manifest GET, formatting the time was a fifth of what the request's
/// log line cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timestamp;

thread_local! {
    /// The second last formatted on this thread, and its text up to the
    /// seconds (`2026-12-05T22:44:53`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write_time(w, SystemTime::now())
    }
}

fn write_time(w: &mut impl std::fmt::Write, now: SystemTime) -> std::fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|second| {
        let Ok(mut second) = second.try_borrow_mut() else {
            return write!(w, "{}", humantime::format_rfc3339_micros(now));
        };
        if second.0 != secs {
            let whole = UNIX_EPOCH + Duration::from_secs(secs);
            let mut text = humantime::format_rfc3339_seconds(whole).to_string();
            text.pop(); // the "Z", written after the microseconds
            *second = (secs, text);
        }
        write!(w, "{}.{:06}Z", second.1, since.subsec_micros())
    })
}

/// The fields of a human-format line off a terminal: the message bare,
/// then `name=value` with each value by `Debug` (strings quoted and
/// escaped), which is what tracing-subscriber's default fields print
/// without colours. The default styles every name and `=` even with colours
/// off; by `perf` that was a third of formatting a request's line. Control
/// characters in the message are escaped, as the default does, so that no
/// line carries a terminal escape sequence or breaks in two.
pub fn plain_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() == "message" {
            std::fmt::Write::write_fmt(&mut EscapeControls(w), format_args!("{value:?}"))
        } else {
            write!(w, "{}={value:?}", field.name())
        }
    })
    .delimited(" ")
}

/// Writes through to a line with every control character escaped.
struct EscapeControls<'a, 'w>(&'a mut Writer<'w>);

impl std::fmt::Write for EscapeControls<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut plain = 0;
        for (at, c) in s.char_indices() {
            if c.is_control() {
                self.0.write_str(&s[plain..at])?;
                write!(self.0, "{}", c.escape_default())?;
                plain = at + c.len_utf8();
            }
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_reads_as_tracing_writes_it_across_seconds() {
        let start = UNIX_EPOCH + Duration::from_micros(1_796_510_693_999_998);
        for step in 0..6 {
            let at = start + Duration::from_micros(step);
            let mut text = String::new();
            write_time(&mut text, at).expect("format");
            assert_eq!(text, humantime::format_rfc3339_micros(at).to_string());
        }
        let mut text = String::new();
        write_time(&mut text, start).expect("format");
        assert_eq!(text, "2026-12-05T22:44:53.999998Z");
        let mut epoch = String::new();
        write_time(&mut epoch, UNIX_EPOCH).expect("format");
        assert_eq!(epoch, "1970-01-01T00:00:00.000000Z");
    }

    /// The line one event makes, formatted by tracing's default fields or
    /// by `plain_fields`, without time or colours.
    fn line(plain: bool, event: impl FnOnce()) -> String {
        let sink = Sink::default();
        let out = sink.clone();
        let builder = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .with_writer(move || out.clone());
        if plain {
            tracing::subscriber::with_default(builder.fmt_fields(plain_fields()).finish(), event);
        } else {
            tracing::subscriber::with_default(builder.finish(), event);
        }
        let bytes = sink.0.lock().expect("sink").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn plain_fields_print_what_tracing_prints_and_escape_the_message() {
        let request = || {
            let span = tracing::info_span!("conn", peer = "127.0.0.1:5");
            let _entered = span.enter();
            tracing::info!(
                method = %http::Method::GET,
                path = "/v2/a \"b\"/manifests/t",
                status = 200u16,
                bytes = 414u64,
                ok = true,
                "request"
            );
        };
        let (default, plain) = (line(false, request), line(true, request));
        assert_eq!(plain, default);
        assert!(
            plain.contains(r#"path="/v2/a \"b\"/manifests/t" status=200"#),
            "{plain}"
        );
        let hostile = || tracing::warn!("from {}", "\x1b[31mred\nnext");
        let plain = line(true, hostile);
        assert!(plain.ends_with("from \\u{1b}[31mred\\nnext\n"), "{plain:?}");
    }

    /// A `Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone()).expect("start");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        (&writer)
                            .write_all(format!("{t} {i}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("logger");
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').expect("a line");
            let (t, i): (usize, usize) = (t.parse().expect("t"), i.parse().expect("i"));
            assert_eq!(i, next[t], "thread {t}'s lines out of order or missing");
            next[t] += 1;
        }
        assert_eq!(next, [20_000; 4]);
    }

    #[test]
    fn a_lone_line_is_written_within_the_flush_interval() {
        let sink = Sink::default();
        let (writer, _guard) = batched(sink.clone()).expect("start");
        (&writer).write_all(b"one line\n").expect("write");
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 40;
        while sink.0.lock().expect("sink").is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&sink.0.lock().expect("sink")[..], b"one line\n");
    }
}
