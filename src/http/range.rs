//! `Range: bytes=...` requests on blobs (RFC 9110 section 14). berth serves
//! single ranges; a header it cannot use (several ranges, bad syntax) is
//! ignored and the whole blob is sent, as the RFC allows.

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
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.parse::<u64>(), last.parse::<u64>()) {
        // bytes=-N: the last N bytes.
        (Err(_), Ok(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start: size.saturating_sub(n),
                    end: size,
                }
            }
        }
        (Ok(start), _) if start >= size => ByteRange::Unsatisfiable,
        // bytes=A-
        (Ok(start), Err(_)) if last.is_empty() => ByteRange::Partial { start, end: size },
        // bytes=A-B
        (Ok(start), Ok(end)) if end >= start => ByteRange::Partial {
            start,
            end: end.saturating_add(1).min(size),
        },
        _ => ByteRange::Full,
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
    }
}
