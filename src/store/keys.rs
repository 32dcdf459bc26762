//! How the metadata database keys its records. Digests are written in
//! their binary form (`Digest::to_key`) and go first wherever berth must
//! find every record about one piece of content (its links, the tags that
//! point at it, its referrers), so that removing content finds them with a
//! prefix scan over that content alone, never a scan of every record.

use crate::digest::Digest;

/// Blob or manifest: the two kinds of stored content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Blob => b'b',
            Kind::Manifest => b'm',
        }
    }

    fn from_tag(tag: u8) -> Option<Kind> {
        match tag {
            b'b' => Some(Kind::Blob),
            b'm' => Some(Kind::Manifest),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        }
    }
}

/// `kind, digest`: a stored object's record.
pub fn object(kind: Kind, digest: &Digest) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + digest.key_len());
    push_object(&mut key, kind, digest);
    key
}

fn push_object(key: &mut Vec<u8>, kind: Kind, digest: &Digest) {
    key.push(kind.tag());
    digest.push_key(key);
}

pub fn parse_object(key: &[u8]) -> Option<(Kind, Digest)> {
    let (&tag, rest) = key.split_first()?;
    let (digest, rest) = Digest::from_key(rest)?;
    rest.is_empty().then_some((Kind::from_tag(tag)?, digest))
}

/// `last used (big-endian ms), kind, digest`: the access index, in the
/// order eviction wants it.
pub fn lru(used_at_ms: u64, kind: Kind, digest: &Digest) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + digest.key_len());
    key.extend_from_slice(&used_at_ms.to_be_bytes());
    push_object(&mut key, kind, digest);
    key
}

pub fn parse_lru(key: &[u8]) -> Option<(u64, Kind, Digest)> {
    let (at, rest) = key.split_first_chunk::<8>()?;
    let (kind, digest) = parse_object(rest)?;
    Some((u64::from_be_bytes(*at), kind, digest))
}

/// `upstream \0 repository`.
pub fn repo(upstream: &str, repo: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(upstream.len() + 1 + repo.len());
    push_repo(&mut key, upstream, repo);
    key
}

fn push_repo(key: &mut Vec<u8>, upstream: &str, repo: &str) {
    key.extend_from_slice(upstream.as_bytes());
    key.push(0);
    key.extend_from_slice(repo.as_bytes());
}

/// `upstream \0 repository \0 last`: tag mappings, found by repository.
pub fn scoped(upstream: &str, repo: &str, last: &str) -> Vec<u8> {
    [upstream.as_bytes(), repo.as_bytes(), last.as_bytes()].join(&0u8)
}

/// `upstream \0 repository \0 last` back into its parts.
pub fn split_scoped(key: &[u8]) -> Option<(String, String, String)> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let mut next = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(str::to_owned)
    };
    Some((next()?, next()?, next()?))
}

/// `digest, upstream \0 repository`: links and referrers lists.
pub fn by_digest(digest: &Digest, upstream: &str, repo_name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(digest.key_len() + upstream.len() + 1 + repo_name.len());
    digest.push_key(&mut key);
    push_repo(&mut key, upstream, repo_name);
    key
}

pub fn parse_by_digest(key: &[u8]) -> Option<(Digest, String, String)> {
    let (digest, rest) = Digest::from_key(key)?;
    let text = std::str::from_utf8(rest).ok()?;
    let (upstream, repo) = text.split_once('\0')?;
    Some((digest, upstream.to_owned(), repo.to_owned()))
}

/// `digest, upstream \0 repository \0 tag`: the tags that point at a digest.
pub fn tag_ref(digest: &Digest, upstream: &str, repo: &str, tag: &str) -> Vec<u8> {
    let mut key = digest.to_key();
    key.extend(scoped(upstream, repo, tag));
    key
}

/// The tag mapping key a `tag_ref` key stands for.
pub fn tag_of_ref(key: &[u8]) -> Option<Vec<u8>> {
    let (_, rest) = Digest::from_key(key)?;
    Some(rest.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn keys_round_trip_and_digests_lead() {
        let d = Algorithm::Sha256.digest(b"x");
        assert_eq!(
            parse_object(&object(Kind::Manifest, &d)),
            Some((Kind::Manifest, d.clone()))
        );
        assert_eq!(
            parse_lru(&lru(42, Kind::Blob, &d)),
            Some((42, Kind::Blob, d.clone()))
        );
        assert!(
            lru(1, Kind::Blob, &d) < lru(2, Kind::Blob, &d),
            "ordered by time"
        );
        let link = by_digest(&d, "docker.io", "library/a");
        assert!(link.starts_with(&d.to_key()));
        assert_eq!(
            parse_by_digest(&link),
            Some((d.clone(), "docker.io".to_owned(), "library/a".to_owned()))
        );
        let tag = tag_ref(&d, "docker.io", "library/a", "1.0");
        assert_eq!(
            tag_of_ref(&tag),
            Some(scoped("docker.io", "library/a", "1.0"))
        );
        assert_eq!(
            split_scoped(&scoped("u", "r", "t")),
            Some(("u".into(), "r".into(), "t".into()))
        );
    }
}
