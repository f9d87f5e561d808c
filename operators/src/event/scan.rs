//! The common case of the line check in one pass: a plain event object whose head fields are
//! plain strings and a small integer. The pass accepts exactly the JSON serde_json accepts and
//! counts nesting as it goes; it answers `None` for anything else (malformed text, nesting past
//! the limit, an envelope, a head field with an escape or of another type, a top-level key with
//! an escape), and the full check in `event.rs` then decides and words the reason. So it can make
//! a valid line cheaper, never change a verdict: `the_scan_agrees_with_the_full_check` holds it to
//! that over generated and mangled lines.
//!
//! The pass also checks UTF-8, so a taken line needs no second pass for it: every byte it reads
//! outside strings is one of JSON's ASCII bytes, and inside strings [`special_or_high`] stops at
//! the first byte past ASCII, from which on the rest of the text is checked once with
//! `std::str::from_utf8` (`the_scan_takes_only_utf8` holds it to that).

use std::ops::Range;

/// The head fields of a plain event: where its name and `uuid` are in its text.
#[derive(Debug, PartialEq)]
pub(super) struct PlainHead {
    pub name: Range<usize>,
    pub team_id: i64,
    pub uuid: Range<usize>,
}

/// Reads a plain event's head in one pass, or `None` when the full check must decide. A head is
/// returned only for text that is UTF-8.
pub(super) fn plain_head(text: &[u8], max_depth: usize) -> Option<PlainHead> {
    // The scan recurses once per level: limits past the configurable ones (a library caller's
    // own) go to the full check, which does not.
    if max_depth > super::MAX_DEPTH_LIMIT {
        return None;
    }
    let mut s = Scan { b: text, i: 0, utf8: false };
    let inner = max_depth.checked_sub(1)?;
    let (mut name, mut team_id, mut uuid, mut properties_ok) = (None, None, None, true);
    if s.token()? != b'{' {
        return None;
    }
    let mut c = s.token()?;
    if c != b'}' {
        loop {
            if c != b'"' {
                return None;
            }
            let start = s.i;
            if s.string()? {
                return None; // an escaped key may spell a head field
            }
            let key = &s.b[start..s.i - 1];
            if s.token()? != b':' {
                return None;
            }
            s.ws();
            // A repeated key counts as serde reads it: the last value wins.
            match key {
                b"event" => name = Some(s.plain_string()?),
                b"uuid" => uuid = Some(s.plain_string()?),
                b"team_id" => team_id = Some(s.small_integer()?),
                b"data" => return None, // an envelope, perhaps
                b"properties" => {
                    properties_ok = matches!(s.peek(), Some(b'{' | b'n'));
                    s.value(inner)?;
                }
                _ => s.value(inner)?,
            }
            match s.token()? {
                b',' => c = s.token()?,
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    if s.i != s.b.len() || !properties_ok {
        return None;
    }
    Some(PlainHead { name: name?, team_id: team_id?, uuid: uuid? })
}

/// A cursor over JSON text, with the grammar's small pieces; the event check here and the
/// parser into QuickJS (`plugin::fromjson`) both read through it.
pub(crate) struct Scan<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) i: usize,
    /// Whether the text is known to be UTF-8 from the first byte past ASCII on (and so, as the
    /// bytes before it were all read as ASCII, whole); until then strings are read with
    /// [`special_or_high`].
    pub(crate) utf8: bool,
}

impl Scan<'_> {
    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub(crate) fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    pub(crate) fn eat_if(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    /// JSON's whitespace, as serde_json skips it.
    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// The next byte that is not JSON whitespace, taken; the common case (the next token right
    /// where the last ended) is one test: whitespace is at most `b' '`.
    #[inline(always)]
    pub(crate) fn token(&mut self) -> Option<u8> {
        let c = self.next()?;
        if c > b' ' || !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
            return Some(c);
        }
        self.ws();
        self.next()
    }

    /// One value of any kind, nested at most `left` levels deep.
    fn value(&mut self, left: usize) -> Option<()> {
        let c = self.next()?;
        self.value_at(c, left)
    }

    /// [`Self::value`] whose first byte `c` was taken.
    fn value_at(&mut self, c: u8, left: usize) -> Option<()> {
        match c {
            b'"' => self.string().map(drop),
            b'{' => self.members(left.checked_sub(1)?),
            b'[' => self.items(left.checked_sub(1)?),
            b't' => self.word(b"rue"),
            b'f' => self.word(b"alse"),
            b'n' => self.word(b"ull"),
            b'-' => self.number(),
            b'0'..=b'9' => {
                self.i -= 1;
                self.number()
            }
            _ => None,
        }
    }

    /// A value inside an object or array, whose first byte `c` was taken: most are strings,
    /// read here without the call to the (recursive, so never inlined) [`Self::value_at`].
    #[inline(always)]
    fn member_value(&mut self, c: u8, left: usize) -> Option<()> {
        if c == b'"' { self.string().map(drop) } else { self.value_at(c, left) }
    }

    /// The rest of an object after its `{`; its values get `left` levels.
    fn members(&mut self, left: usize) -> Option<()> {
        match self.token()? {
            b'}' => return Some(()),
            b'"' => {}
            _ => return None,
        }
        loop {
            self.string()?;
            if self.token()? != b':' {
                return None;
            }
            let c = self.token()?;
            self.member_value(c, left)?;
            match self.token()? {
                b',' if self.token()? == b'"' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The rest of an array after its `[`; its items get `left` levels.
    fn items(&mut self, left: usize) -> Option<()> {
        let mut c = self.token()?;
        if c == b']' {
            return Some(());
        }
        loop {
            self.member_value(c, left)?;
            match self.token()? {
                b',' => c = self.token()?,
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    pub(crate) fn word(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.i + rest.len();
        (self.b.get(self.i..end)? == rest).then(|| self.i = end)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// A number after its optional `-`: `0` or digits without a leading zero, then an optional
    /// fraction and exponent, each with at least one digit.
    pub(crate) fn number(&mut self) -> Option<()> {
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => drop(self.digits()),
            _ => return None,
        }
        if self.eat_if(b'.') && self.digits() == 0 {
            return None;
        }
        if self.eat_if(b'e') || self.eat_if(b'E') {
            if !self.eat_if(b'+') {
                self.eat_if(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// A `team_id`: a non-negative integer of at most 18 digits (no sign, fraction or exponent;
    /// those go to the full check, which knows what serde makes of `-0` or `1e3`).
    fn small_integer(&mut self) -> Option<i64> {
        let start = self.i;
        let n = self.digits();
        let digits = &self.b[start..self.i];
        if n == 0 || n > 18 || (n > 1 && digits[0] == b'0') || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(digits.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    }

    /// A non-empty string without escapes: where its contents are. Both ends are next to ASCII
    /// quotes, so the range falls on character boundaries.
    fn plain_string(&mut self) -> Option<Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        let escaped = self.string()?;
        let end = self.i - 1;
        (!escaped && end > start).then_some(start..end)
    }

    /// The rest of a string after its opening quote: whether it held an escape. `None` for a
    /// control character, an escape serde_json refuses or no closing quote.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            self.i = special_or_high(self.b, self.i)?;
            match self.next()? {
                b'"' => return Some(escaped),
                // A byte past ASCII. At the first (every byte before it was read as ASCII), the
                // rest of the text, from this character on, is checked once.
                0x80.. => {
                    if !self.utf8 {
                        std::str::from_utf8(&self.b[self.i - 1..]).ok()?;
                        self.utf8 = true;
                    }
                }
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        // Any four hex digits: a lone surrogate passes, as serde_json skips it.
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
        }
    }
}

/// Where the first `"`, `\` or control character (below 0x20) at or after `from` is: most of an
/// event's bytes are inside strings, so sixteen bytes are tested at a time (SSE2, which every
/// x86-64 processor has), then eight ([`special_bytes`]) near the end of the text.
#[inline(always)]
pub(crate) fn special(b: &[u8], from: usize) -> Option<usize> {
    first_of::<false>(b, from)
}

/// [`special`], or the first byte past ASCII (0x80 and up) if that comes first.
#[inline(always)]
pub(crate) fn special_or_high(b: &[u8], from: usize) -> Option<usize> {
    first_of::<true>(b, from)
}

/// [`special`] (`HIGH` false) or [`special_or_high`] (`HIGH` true).
#[inline(always)]
fn first_of<const HIGH: bool>(b: &[u8], mut from: usize) -> Option<usize> {
    // Sixteen bytes at a time while they are inside `b`: `last` is the last place they start
    // at, so the test cannot overflow, whatever `from` is.
    #[cfg(target_arch = "x86_64")]
    if let Some(last) = b.len().checked_sub(16) {
        while from <= last {
            use std::arch::x86_64::{
                __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
            };
            // SAFETY: SSE2 is part of the x86-64 baseline (the intrinsics are `unsafe` only for
            // that); the load is unaligned and reads b[from..from + 16], inside `b` by the loop's
            // condition.
            #[allow(unsafe_code)]
            let hits = unsafe {
                let v = _mm_loadu_si128(b.as_ptr().add(from).cast::<__m128i>());
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                let control = if HIGH {
                    // As signed bytes, those from 0x80 up are negative: below 0x20 with the
                    // control characters.
                    _mm_cmplt_epi8(v, _mm_set1_epi8(0x20))
                } else {
                    // Unsigned v <= 0x1f exactly when max(v, 0x1f) is 0x1f.
                    _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f))
                };
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
            };
            if hits != 0 {
                return Some(from + hits.trailing_zeros() as usize);
            }
            from += 16;
        }
    }
    while let Some(chunk) = b.get(from..from.saturating_add(8)) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte's own high bit marks it exactly, so the lowest mark is still the first hit.
        let hits = special_bytes(word) | if HIGH { word & 0x8080_8080_8080_8080 } else { 0 };
        if hits != 0 {
            return Some(from + (hits.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    b.get(from..)?.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (HIGH && c >= 0x80)).map(|j| from + j)
}

/// Non-zero when `word` holds a `"`, `\` or a byte below 0x20, and then its lowest set bit is the
/// high bit of the first such byte of a little-endian word. (x - 0x01) & !x has a byte's high bit
/// set when that byte is zero, or when a borrow from a zero byte below it reaches it: bytes above
/// the first hit may be marked too, never bytes below it.
pub(crate) fn special_bytes(word: u64) -> u64 {
    const fn each(b: u8) -> u64 {
        u64::from_le_bytes([b; 8])
    }
    let quote = word ^ each(b'"');
    let backslash = word ^ each(b'\\');
    (quote.wrapping_sub(each(1)) & !quote | backslash.wrapping_sub(each(1)) & !backslash | word.wrapping_sub(each(0x20)) & !word)
        & each(0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_finds_the_first_quote_backslash_or_control_byte() {
        for (text, want) in [
            (&b"abcdefgh\"ij"[..], Some(8)),
            (b"abc\\defghij", Some(3)),
            (b"abcdefghijklmnop\x1f", Some(16)),
            (b"\x7f\x80\xff\x20!#[]\"", Some(8)),
            (b"\x00", Some(0)),
            (b"no special bytes at all here", None),
            (b"", None),
        ] {
            assert_eq!(special(text, 0), want, "{}", String::from_utf8_lossy(text));
        }
        // Starts at, past and far past the end: nothing, and no read outside the text.
        assert_eq!(special(&[b'"'; 32], 32), None);
        assert_eq!(special(&[b'"'; 32], 33), None);
        assert_eq!(special(&[b'a'; 32], usize::MAX - 7), None);
        // Every byte value at every place of a few 16- and 8-byte blocks and a tail, against the
        // definition.
        for place in 0..45 {
            for b in 0..=255u8 {
                let mut text = [b'a'; 45];
                text[place] = b;
                let special_byte = b == b'"' || b == b'\\' || b < 0x20;
                assert_eq!(special(&text, 0), special_byte.then_some(place), "byte {b:#x} at {place}");
                assert_eq!(special(&text, 3), (special_byte && place >= 3).then_some(place), "byte {b:#x} at {place}, from 3");
                let or_high = special_byte || b >= 0x80;
                assert_eq!(special_or_high(&text, 0), or_high.then_some(place), "byte {b:#x} at {place}");
                assert_eq!(special_or_high(&text, 3), (or_high && place >= 3).then_some(place), "byte {b:#x} at {place}, from 3");
            }
        }
    }

    #[test]
    fn special_finds_the_first_of_several() {
        // Random words with several special bytes: the first one is found.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        // (0xa2 and 0xdc are `"` and `\\` with the high bit set.)
        let alphabet = [b'"', b'\\', 0x1f, 0x00, 0x20, 0x21, 0x5b, 0x80, 0xa0, 0xff, 0xa2, 0xdc, b'a', b'b', b'c', b'd'];
        for round in 0..100_000 {
            // Mostly plain bytes, so that the first hit falls anywhere in a 16-byte block.
            let text: Vec<u8> = (0..(8 + round % 33))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x.is_multiple_of(13) { alphabet[(x >> 8) as usize % 12] } else { alphabet[12 + (x >> 8) as usize % 4] }
                })
                .collect();
            let first = text.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            assert_eq!(special(&text, 0), first, "{text:?}");
            let from = round % 5;
            let first_from = text.iter().skip(from).position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|j| j + from);
            assert_eq!(special(&text, from), first_from, "{text:?} from {from}");
            let high_from = text.iter().skip(from).position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c)).map(|j| j + from);
            assert_eq!(special_or_high(&text, from), high_from, "{text:?} from {from}");
        }
    }

    #[test]
    fn a_plain_event_is_read_in_one_pass() {
        let line = r#" {"uuid":"u1","event":"$pageview","team_id":2,"properties":{"a":[1,-2.5e+3,true,null,{}],"b":"x\"y"}} "#;
        let head = plain_head(line.as_bytes(), 64).unwrap();
        assert_eq!((&line[head.name], head.team_id, &line[head.uuid]), ("$pageview", 2, "u1"));
        // The event object is level 1: properties' inner object is level 4.
        assert!(plain_head(line.as_bytes(), 4).is_some());
        assert!(plain_head(line.as_bytes(), 3).is_none());
        // A limit past the configurable ones is left to the full check, whatever the depth.
        assert!(plain_head(line.as_bytes(), super::super::MAX_DEPTH_LIMIT).is_some());
        assert!(plain_head(line.as_bytes(), usize::MAX).is_none());
        let deep = format!(r#"{{"uuid":"u","event":"e","team_id":1,"p":{}"#, "[".repeat(1 << 20));
        assert!(plain_head(deep.as_bytes(), usize::MAX).is_none());
    }
}
