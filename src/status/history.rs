//! The last hour, as a ring of per-minute samples of berth's counters.
//!
//! A sample holds cumulative counters, so a figure "in the last hour" is
//! the counters now minus the oldest sample still kept, and each chart
//! point is the difference of two neighbours. The ring holds 61 samples
//! (an hour of minutes and the one before), a few kilobytes whatever the
//! traffic; the per-upstream part grows only with the configuration.

use std::collections::VecDeque;

use super::Counts;

/// Samples kept: one an hour ago and one per minute since.
const KEPT: usize = 61;

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Unix seconds.
    pub at: u64,
    pub counts: Counts,
    /// Each upstream's (requests, body bytes), in configuration order.
    pub upstreams: Vec<(u64, u64)>,
}

/// One minute of the charts: rates over the span between two samples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Unix seconds at the end of the span.
    pub at: u64,
    pub requests_per_second: f64,
    /// Hits of all lookups in the span; `None` when there were none.
    pub hit_ratio: Option<f64>,
    pub upstream_bytes_per_second: f64,
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The oldest sample kept (at most an hour old), the baseline of every
    /// "last hour" figure; `None` before the first sample.
    pub fn oldest(&self) -> Option<&Sample> {
        self.samples.front()
    }

    /// One point per span between samples, and a last one from the latest
    /// sample to `now` (the minute under way), oldest first.
    pub fn points(&self, now: &Sample) -> Vec<Point> {
        let mut points: Vec<Point> = self
            .samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .filter_map(|(a, b)| point(a, b))
            .collect();
        if let Some(latest) = self.samples.back() {
            points.extend(point(latest, now));
        }
        points
    }
}

/// The rates between two samples; `None` when less than a second apart.
fn point(from: &Sample, to: &Sample) -> Option<Point> {
    let seconds = to.at.checked_sub(from.at).filter(|s| *s > 0)? as f64;
    let (a, b) = (&from.counts, &to.counts);
    let hits = b.hits.saturating_sub(a.hits);
    let lookups = hits + b.misses.saturating_sub(a.misses);
    Some(Point {
        at: to.at,
        requests_per_second: b.requests.saturating_sub(a.requests) as f64 / seconds,
        hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
        upstream_bytes_per_second: b.upstream_bytes.saturating_sub(a.upstream_bytes) as f64
            / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, requests: u64, hits: u64, misses: u64) -> Sample {
        Sample {
            at,
            counts: Counts {
                requests,
                hits,
                misses,
                upstream_bytes: requests * 10,
                ..Counts::default()
            },
            upstreams: vec![(requests, requests * 10)],
        }
    }

    #[test]
    fn the_ring_keeps_an_hour() {
        let mut h = History::default();
        for minute in 0..200 {
            h.push(sample(minute * 60, minute, 0, 0));
        }
        assert_eq!(h.samples.len(), KEPT);
        assert_eq!(h.oldest().map(|s| s.at), Some((200 - KEPT as u64) * 60));
    }

    #[test]
    fn points_are_rates_between_samples_and_up_to_now() {
        let mut h = History::default();
        h.push(sample(0, 0, 0, 0));
        h.push(sample(60, 120, 30, 10));
        let now = sample(90, 150, 30, 10);
        let points = h.points(&now);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].requests_per_second, 2.0);
        assert_eq!(points[0].hit_ratio, Some(0.75));
        assert_eq!(points[0].upstream_bytes_per_second, 20.0);
        assert_eq!(points[1].requests_per_second, 1.0);
        assert_eq!(points[1].hit_ratio, None, "no lookups in that span");
    }

    #[test]
    fn no_point_spans_less_than_a_second() {
        let mut h = History::default();
        h.push(sample(100, 0, 0, 0));
        assert!(h.points(&sample(100, 5, 0, 0)).is_empty());
    }
}
