//! A repository's tags, kept compact: one string of sorted, distinct names
//! joined by `\n` (a tag cannot hold one), and where each name starts. A
//! list of 100,000 tags takes its names' bytes plus 4 bytes each, not a
//! heap allocation per tag; it is stored as its text, and answers a page
//! (`last`, `n`) by binary search.

use std::ops::Range;

/// Sorted, distinct tag names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagList {
    text: String,
    starts: Vec<u32>,
}

/// Gathers names, from any number of upstream pages, into one buffer.
#[derive(Debug, Default)]
pub struct Gathered {
    text: String,
    spans: Vec<(u32, u32)>,
}

impl Gathered {
    /// Adds a name; `false` when it is not a valid tag (and is left out).
    pub fn push(&mut self, name: &str) -> bool {
        if !crate::reference::validate_tag(name) {
            return false;
        }
        let (Ok(start), Ok(end)) = (
            u32::try_from(self.text.len()),
            u32::try_from(self.text.len() + name.len()),
        ) else {
            return false;
        };
        self.text.push_str(name);
        self.spans.push((start, end));
        true
    }

    /// The bytes of the names gathered so far.
    pub fn bytes(&self) -> usize {
        self.text.len()
    }

    /// The names, sorted and without repeats.
    pub fn finish(self) -> TagList {
        let Gathered { text, mut spans } = self;
        let name = |&(s, e): &(u32, u32)| &text[s as usize..e as usize];
        spans.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        spans.dedup_by(|a, b| name(a) == name(b));
        let mut list = TagList {
            text: String::with_capacity(text.len() + spans.len()),
            starts: Vec::with_capacity(spans.len()),
        };
        for span in &spans {
            list.append(name(span));
        }
        list
    }
}

impl TagList {
    /// A list from text as `as_text` gives it (the stored form). Text that
    /// is not sorted is sorted; invalid names are left out.
    pub fn from_text(text: &str) -> TagList {
        let sorted = text
            .split('\n')
            .zip(text.split('\n').skip(1))
            .all(|(a, b)| a < b);
        if sorted && text.split('\n').all(crate::reference::validate_tag) {
            let mut starts = Vec::new();
            let mut at = 0;
            for name in text.split('\n') {
                starts.push(at);
                at += name.len() as u32 + 1;
            }
            return TagList {
                text: text.to_owned(),
                starts,
            };
        }
        let mut gathered = Gathered::default();
        for name in text.split('\n') {
            gathered.push(name);
        }
        gathered.finish()
    }

    /// The names from `names`, in any order.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> TagList {
        let mut gathered = Gathered::default();
        for name in names {
            gathered.push(name);
        }
        gathered.finish()
    }

    fn append(&mut self, name: &str) {
        if !self.starts.is_empty() {
            self.text.push('\n');
        }
        self.starts.push(self.text.len() as u32);
        self.text.push_str(name);
    }

    /// The stored form: the names joined by `\n`.
    pub fn as_text(&self) -> &str {
        &self.text
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The `i`th name.
    pub fn get(&self, i: usize) -> Option<&str> {
        let start = *self.starts.get(i)? as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.text.len(), |next| *next as usize - 1);
        self.text.get(start..end)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The positions of the page after `last` (exclusive) of at most `n`
    /// names, and whether more follow.
    pub fn page(&self, last: Option<&str>, n: Option<usize>) -> (Range<usize>, bool) {
        let start = match last {
            Some(last) => self.partition_point(|name| name <= last),
            None => 0,
        };
        let rest = self.len() - start;
        match n {
            Some(n) if n < rest => (start..start + n, true),
            _ => (start..self.len(), false),
        }
    }

    fn partition_point(&self, pred: impl Fn(&str) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if self.get(mid).is_some_and(&pred) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// Memory the list holds, for bounded caches.
    pub fn weight(&self) -> usize {
        self.text.len() + self.starts.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &TagList, range: Range<usize>) -> Vec<&str> {
        range.filter_map(|i| list.get(i)).collect()
    }

    #[test]
    fn gathered_names_are_sorted_and_distinct() {
        let list = TagList::of(["v2", "a", "latest", "a", "bad name", "v1"]);
        assert_eq!(list.iter().collect::<Vec<_>>(), ["a", "latest", "v1", "v2"]);
        assert_eq!(list.as_text(), "a\nlatest\nv1\nv2");
        assert_eq!(TagList::from_text(list.as_text()), list);
        assert_eq!(TagList::from_text("b\na\nb"), TagList::of(["a", "b"]));
        assert!(TagList::of([]).is_empty());
        assert_eq!(TagList::from_text(""), TagList::default());
    }

    #[test]
    fn pages_follow_last_and_n() {
        let list = TagList::of(["a", "b", "c", "v1"]);
        let (range, more) = list.page(None, Some(2));
        assert_eq!((names(&list, range), more), (vec!["a", "b"], true));
        let (range, more) = list.page(Some("b"), Some(2));
        assert_eq!((names(&list, range), more), (vec!["c", "v1"], false));
        let (range, more) = list.page(Some("bb"), None);
        assert_eq!((names(&list, range), more), (vec!["c", "v1"], false));
        let (range, more) = list.page(None, Some(0));
        assert_eq!((names(&list, range), more), (vec![], true));
        let (range, more) = list.page(Some("z"), Some(3));
        assert_eq!((names(&list, range), more), (vec![], false));
    }
}
