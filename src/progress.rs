//! Progress of the operator's long commands (`warm`, `export`, `import`):
//! a bar on a terminal, a plain line every tenth of the way otherwise (a
//! log file or CI has no use for a redrawn bar), nothing when hidden (tests
//! calling the library).
//!
//! Shared by reference between concurrent transfers, so it counts with
//! atomics.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a line is printed without a terminal when the total is unknown.
const LINE_EVERY_UNKNOWN: u64 = 256 * 1024 * 1024;

enum Display {
    Bar(ProgressBar),
    Lines,
    Hidden,
}

/// Bytes done out of a total that may grow as work is discovered.
pub struct Progress {
    display: Display,
    label: String,
    done: AtomicU64,
    total: AtomicU64,
    next_line: AtomicU64,
}

/// `n` bytes for people: `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).to_string_as(true)
}

impl Progress {
    /// A bar on stderr when it is a terminal, lines otherwise; `total` 0
    /// when not known yet.
    pub fn new(label: &str, total: u64) -> Progress {
        let display = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(label.to_owned());
            Display::Bar(bar)
        } else {
            Display::Lines
        };
        Progress {
            display,
            label: label.to_owned(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(total),
            next_line: AtomicU64::new(0),
        }
    }

    /// Counts nothing and prints nothing.
    pub fn hidden() -> Progress {
        Progress {
            display: Display::Hidden,
            label: String::new(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            next_line: AtomicU64::new(u64::MAX),
        }
    }

    /// More work found: the total grows by `n` bytes.
    pub fn grow(&self, n: u64) {
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if let Display::Bar(bar) = &self.display {
            bar.set_length(total);
        }
    }

    /// `n` more bytes done.
    pub fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.display {
            Display::Bar(bar) => bar.set_position(done),
            Display::Lines => self.maybe_line(done),
            Display::Hidden => {}
        }
    }

    fn maybe_line(&self, done: u64) {
        let total = self.total.load(Ordering::Relaxed);
        let next = self.next_line.load(Ordering::Relaxed);
        if done < next {
            return;
        }
        let step = if total > 0 {
            (total / 10).max(1)
        } else {
            LINE_EVERY_UNKNOWN
        };
        if self
            .next_line
            .compare_exchange(next, done + step, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another transfer printed this line
        }
        if done == 0 {
            return;
        }
        if total > 0 {
            eprintln!(
                "{}: {} of {} ({}%)",
                self.label,
                bytes(done),
                bytes(total),
                done.saturating_mul(100) / total
            );
        } else {
            eprintln!("{}: {}", self.label, bytes(done));
        }
    }

    /// A line of output that does not garble the bar.
    pub fn note(&self, line: &str) {
        match &self.display {
            Display::Bar(bar) => bar.println(line),
            Display::Lines => eprintln!("{line}"),
            Display::Hidden => {}
        }
    }

    /// Removes the bar; the caller prints its summary next.
    pub fn finish(&self) {
        if let Display::Bar(bar) = &self.display {
            bar.finish_and_clear();
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}
