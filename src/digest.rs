//! Content digests (`sha256:<hex>`, `sha512:<hex>`): parsing per the OCI
//! image-spec grammar, and a hasher that verifies content in one pass as it
//! streams by.
//!
//! A `Digest` is always valid once constructed, so the rest of berth can use
//! its hex form in file names and store keys without checking again.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The hash algorithms berth can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// The all-zero digest: one no content has, for probing.
    pub fn zero(self) -> Digest {
        Digest {
            algorithm: self,
            hex: "0".repeat(self.hex_len()),
        }
    }

    /// Digest of a complete byte string.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(self);
        hasher.update(bytes);
        hasher.finish()
    }
}

/// A validated content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest berth can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form <algorithm>:<hex>")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} has an encoded part of the wrong length or with characters other than lowercase hex")]
    BadEncoding(String),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded part, lowercase hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of the empty blob, for this algorithm.
    pub fn is_empty_blob(&self) -> bool {
        *self == self.algorithm.digest(b"")
    }

    /// A compact binary form for database keys: one byte for the
    /// algorithm, then the raw hash (33 or 65 bytes, against 71 or 135 as
    /// text), so that a million keys cost half the space.
    pub fn to_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.key_len());
        self.push_key(&mut key);
        key
    }

    /// The length of `to_key`'s form.
    pub fn key_len(&self) -> usize {
        1 + self.hex.len() / 2
    }

    /// Appends `to_key`'s form to `out`, decoded in place: every store
    /// lookup builds a key, so without a buffer of its own.
    pub fn push_key(&self, out: &mut Vec<u8>) {
        out.push(match self.algorithm {
            Algorithm::Sha256 => b'2',
            Algorithm::Sha512 => b'5',
        });
        let start = out.len();
        out.resize(start + self.hex.len() / 2, 0);
        // The hex part was validated at construction, so this cannot fail.
        if hex::decode_to_slice(&self.hex, &mut out[start..]).is_err() {
            out.truncate(start);
        }
    }

    /// The length of `<algorithm>:<hex>`.
    pub fn text_len(&self) -> usize {
        self.algorithm.name().len() + 1 + self.hex.len()
    }

    /// Appends `<algorithm>:<hex>` to `out` without the formatting
    /// machinery: the headers of every response carry it.
    pub fn push_to(&self, out: &mut String) {
        out.push_str(self.algorithm.name());
        out.push(':');
        out.push_str(&self.hex);
    }

    /// `<algorithm>:<hex>` in a string of its exact size, as `to_string`
    /// gives it but without the formatting machinery.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.text_len());
        self.push_to(&mut text);
        text
    }

    /// Reads a key written by `to_key` from the front of `bytes`; returns
    /// the digest and what follows it.
    pub fn from_key(bytes: &[u8]) -> Option<(Digest, &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        let algorithm = match tag {
            b'2' => Algorithm::Sha256,
            b'5' => Algorithm::Sha512,
            _ => return None,
        };
        let len = algorithm.hex_len() / 2;
        if rest.len() < len {
            return None;
        }
        let (raw, rest) = rest.split_at(len);
        let digest = Digest {
            algorithm,
            hex: hex::encode(raw),
        };
        Some((digest, rest))
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            // The spec's grammar for other algorithms, so that a well-formed
            // but unknown one is told apart from garbage.
            other
                if !other.is_empty()
                    && other.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)
                    }) =>
            {
                return Err(DigestError::UnsupportedAlgorithm(other.to_owned()))
            }
            _ => return Err(DigestError::Malformed(s.to_owned())),
        };
        let valid_hex = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hex {
            return Err(DigestError::BadEncoding(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.algorithm.name())?;
        f.write_str(":")?;
        f.write_str(&self.hex)
    }
}

/// Incremental hashing for either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_round_trip() {
        let d: Digest = EMPTY.parse().expect("valid");
        assert_eq!(d.to_string(), EMPTY);
        assert!(d.is_empty_blob());
    }

    #[test]
    fn rejects_what_the_grammar_forbids() {
        assert!(matches!(
            "sha256".parse::<Digest>(),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            "md5:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:ABCD".parse::<Digest>(),
            Err(DigestError::BadEncoding(_))
        ));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
        assert!("sha256:e3b0".parse::<Digest>().is_err());
        assert!("../../etc:passwd".parse::<Digest>().is_err());
    }

    #[test]
    fn sha512_is_supported() {
        let d = Algorithm::Sha512.digest(b"abc");
        let parsed: Digest = d.to_string().parse().expect("valid");
        assert_eq!(parsed.algorithm(), Algorithm::Sha512);
        assert_eq!(parsed.hex().len(), 128);
    }

    #[test]
    fn database_keys_round_trip() {
        for d in [
            Algorithm::Sha256.digest(b"a"),
            Algorithm::Sha512.digest(b"b"),
        ] {
            let mut key = d.to_key();
            key.extend_from_slice(b"rest");
            let (back, rest) = Digest::from_key(&key).expect("a key");
            assert_eq!(back, d);
            assert_eq!(rest, b"rest");
        }
        assert!(Digest::from_key(b"2short").is_none());
        assert!(Digest::from_key(b"").is_none());
    }

    #[test]
    fn incremental_hashing_matches_one_shot() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Algorithm::Sha256.digest(b"hello world"));
    }
}
