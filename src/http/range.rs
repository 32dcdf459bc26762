//! `Range: bytes=...` requests on blobs (RFC 9110 section 14). berth serves
//! single ranges; a header it cannot use (several ranges, bad syntax) is
//! ignored and the whole blob is sent, as the RFC allows.
//!
//! The grammar is `http-range-header`'s; what a range means for a blob of a
//! given size is decided here, by RFC 9110's rules (a suffix longer than the
//! blob is the whole blob, an end past it is clamped), which that crate's
//! own validation is stricter than. Whitespace inside the range, which some
//! clients send, is tolerated as it always was.

use http_range_header::{EndPosition, RangeUnsatisfiableError, StartPosition};

/// What to send of a blob of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    Full,
    /// `start..end`, end exclusive.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

pub fn parse(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Full;
    };
    let spec: String = spec.split_whitespace().collect();
    let ranges = match http_range_header::parse_range_header(&format!("bytes={spec}")) {
        Ok(parsed) => parsed.ranges,
        // `bytes=-0`: the last zero bytes, which no blob has.
        Err(RangeUnsatisfiableError::ZeroSuffix) => return ByteRange::Unsatisfiable,
        Err(_) => return ByteRange::Full,
    };
    let [range] = ranges.as_slice() else {
        return ByteRange::Full;
    };
    match (range.start, range.end) {
        (StartPosition::FromLast(n), _) => {
            if size == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start: size.saturating_sub(n),
                    end: size,
                }
            }
        }
        (StartPosition::Index(start), _) if start >= size => ByteRange::Unsatisfiable,
        (StartPosition::Index(start), EndPosition::LastByte) => {
            ByteRange::Partial { start, end: size }
        }
        (StartPosition::Index(start), EndPosition::Index(last)) if last >= start => {
            ByteRange::Partial {
                start,
                end: last.saturating_add(1).min(size),
            }
        }
        (StartPosition::Index(_), EndPosition::Index(_)) => ByteRange::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(
            parse(Some("bytes=10-19"), 100),
            ByteRange::Partial { start: 10, end: 20 }
        );
        assert_eq!(
            parse(Some("bytes=90-"), 100),
            ByteRange::Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse(Some("bytes=-5"), 100),
            ByteRange::Partial {
                start: 95,
                end: 100
            }
        );
        assert_eq!(
            parse(Some("bytes=-500"), 100),
            ByteRange::Partial { start: 0, end: 100 }
        );
        assert_eq!(
            parse(Some("bytes=50-500"), 100),
            ByteRange::Partial {
                start: 50,
                end: 100
            }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(parse(Some("bytes=100-"), 100), ByteRange::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-0"), 0), ByteRange::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 100), ByteRange::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-3"), 0), ByteRange::Unsatisfiable);
    }

    #[test]
    fn unusable_headers_mean_the_whole_blob() {
        assert_eq!(parse(None, 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=0-1,5-6"), 100), ByteRange::Full);
        assert_eq!(parse(Some("items=0-1"), 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=9-3"), 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=x-y"), 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=1-2-3"), 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes="), 100), ByteRange::Full);
    }

    #[test]
    fn tolerated_forms() {
        assert_eq!(
            parse(Some(" bytes=10 - 19 "), 100),
            ByteRange::Partial { start: 10, end: 20 }
        );
        assert_eq!(
            parse(Some("bytes=0-18446744073709551615"), 100),
            ByteRange::Partial { start: 0, end: 100 }
        );
        assert_eq!(
            parse(Some("bytes=-18446744073709551615"), 100),
            ByteRange::Partial { start: 0, end: 100 }
        );
    }
}
