//! Message payloads that share their bytes.
//!
//! A live stream's message goes to thousands of subscribers, each with its own short header
//! (the Flash message type and a timestamp rebased for that subscriber) in front of the same
//! media bytes. [`Payload`] holds that header inline and the media as a range of a
//! reference-counted buffer, so queueing it on a flow costs a reference count, not a copy; the
//! bytes are copied once, into the packet being encrypted.

use std::ops::Range;
use std::sync::Arc;

/// Longest inline head a [`Payload`] carries.
pub const MAX_PAYLOAD_HEAD: usize = 16;

/// A message's bytes: an inline head of at most [`MAX_PAYLOAD_HEAD`] bytes followed by a range
/// of a shared buffer. Cloning it copies the head and counts one more reference to the body.
#[derive(Clone)]
pub struct Payload {
    head: [u8; MAX_PAYLOAD_HEAD],
    head_len: u8,
    body: Arc<[u8]>,
    start: usize,
    end: usize,
}

impl core::fmt::Debug for Payload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Payload")
            .field("head_len", &self.head_len)
            .field("body_len", &(self.end - self.start))
            .finish_non_exhaustive()
    }
}

impl Payload {
    /// `head` followed by `body[range]`, without copying the body. `None` when the head is
    /// longer than [`MAX_PAYLOAD_HEAD`] or the range is not within the body.
    pub fn new(head: &[u8], body: Arc<[u8]>, range: Range<usize>) -> Option<Payload> {
        if head.len() > MAX_PAYLOAD_HEAD || range.start > range.end || range.end > body.len() {
            return None;
        }
        let mut inline = [0u8; MAX_PAYLOAD_HEAD];
        inline[..head.len()].copy_from_slice(head);
        Some(Payload {
            head: inline,
            head_len: u8::try_from(head.len()).ok()?,
            body,
            start: range.start,
            end: range.end,
        })
    }

    /// A payload owning a copy of `data` (one allocation).
    pub fn copy_from(data: &[u8]) -> Payload {
        let len = data.len();
        Payload {
            head: [0; MAX_PAYLOAD_HEAD],
            head_len: 0,
            body: Arc::from(data),
            start: 0,
            end: len,
        }
    }

    fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// Length in bytes: head and body range.
    pub fn len(&self) -> usize {
        usize::from(self.head_len) + (self.end - self.start)
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `from..to` of the payload as two slices to be written one after the other
    /// (the part in the head, then the part in the body); out-of-range positions are clamped.
    pub fn slices(&self, from: usize, to: usize) -> (&[u8], &[u8]) {
        let head = self.head();
        let to = to.min(self.len());
        let from = from.min(to);
        let split = head.len();
        let first = head.get(from.min(split)..to.min(split)).unwrap_or_default();
        let body = self.body.get(self.start..self.end).unwrap_or_default();
        let second = body
            .get(from.saturating_sub(split)..to.saturating_sub(split))
            .unwrap_or_default();
        (first, second)
    }

    /// The whole payload as one vector (for tests and logs; allocates).
    pub fn to_vec(&self) -> Vec<u8> {
        let (a, b) = self.slices(0, self.len());
        [a, b].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_long_heads_and_bad_ranges() {
        let body: Arc<[u8]> = Arc::from(&b"abcdef"[..]);
        assert!(Payload::new(&[0; MAX_PAYLOAD_HEAD + 1], Arc::clone(&body), 0..1).is_none());
        assert!(Payload::new(b"x", Arc::clone(&body), 2..7).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 3..2;
        assert!(Payload::new(b"x", Arc::clone(&body), reversed).is_none());
        let p = Payload::new(b"xy", body, 2..5).unwrap();
        assert_eq!(p.to_vec(), b"xycde");
        assert_eq!(p.slices(1, 4), (&b"y"[..], &b"cd"[..]));
        assert_eq!(p.slices(3, 99), (&b""[..], &b"de"[..]));
    }

    proptest! {
        #[test]
        fn slices_are_the_concatenation(
            head in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD_HEAD),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            cut in any::<(usize, usize)>(),
            window in any::<(usize, usize)>(),
        ) {
            let start = cut.0 % (body.len() + 1);
            let end = start + cut.1 % (body.len() - start + 1);
            let whole: Vec<u8> = head.iter().chain(&body[start..end]).copied().collect();
            let p = Payload::new(&head, Arc::from(&body[..]), start..end).unwrap();
            prop_assert_eq!(p.len(), whole.len());
            let from = window.0 % (whole.len() + 1);
            let to = from + window.1 % (whole.len() - from + 1);
            let (a, b) = p.slices(from, to);
            prop_assert_eq!([a, b].concat(), whole[from..to].to_vec());
        }
    }
}
