//! A single-pass scanner for the usual shape of a wire message: with it, decoding a ~330-byte
//! message takes 0.53 µs instead of serde's 0.98 µs (`cargo bench -p benches --bench stages`).
//!
//! It returns exactly what `serde_json::from_str::<WireMessage>` would, or `None` whenever the
//! input leaves the plain path: a backslash or control character in a string, a key given
//! twice, a number it cannot convert exactly as serde does (more than 15 significant digits, an
//! exponent beyond ±22, a fraction for an integer field), a value of an unexpected type, deep
//! nesting, or anything that is not valid JSON. The caller then runs serde, which produces the
//! value or the error (and its reject reason and message), so nothing about rejects depends on
//! this scanner. `fast_path_agrees_with_serde` checks the equivalence on mutated messages.

use std::borrow::Cow;

use super::{WireGnss, WireMessage, WireObd, WirePower, WireTs};

/// Nesting of unknown fields' values beyond which the scanner gives up (serde allows 128).
const MAX_DEPTH: usize = 64;

/// Powers of ten exactly representable as `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Scans `text` as one wire message; `None` means "ask serde".
pub(super) fn wire_message(text: &str) -> Option<WireMessage<'_>> {
    let mut scan = Scan::new(text);
    let m = scan.message()?;
    scan.ws();
    (scan.at == scan.bytes.len()).then_some(m)
}

/// Splits a batch array into the text of its elements, exactly as `Vec<&RawValue>` would,
/// calling `element` with each one's text and what `wire_message` of that text returns, read
/// in the same pass (`None`: the scanner declines it, serde decides). Returns how many elements
/// there were; `None` means "ask serde", and the elements passed so far are to be dropped.
pub(super) fn array_elements<'a>(
    text: &'a str,
    mut element: impl FnMut(&'a str, Option<WireMessage<'a>>),
) -> Option<usize> {
    let mut scan = Scan::new(text);
    let mut count = 0;
    scan.array(|scan| {
        scan.ws();
        let start = scan.at;
        let message = scan.message();
        if message.is_none() {
            scan.at = start;
            scan.skip_value(1)?;
        }
        element(&text[start..scan.at], message);
        count += 1;
        Some(())
    })?;
    scan.ws();
    (scan.at == scan.bytes.len()).then_some(count)
}

/// The position of the quote that closes a string whose content starts at `at`; `None` at a
/// backslash or a control character before it, or without one. Eight bytes at a time: a
/// message's strings are nearly a third of its bytes, and this was its costliest loop.
fn string_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        // The high bit of each byte that is zero in `quote` or `backslash` or below 0x20 in
        // `word`. A borrow can also flag a byte above a flagged one, never one below it, so
        // the lowest flag is exact.
        let flags = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | word.wrapping_sub(ONES * 0x20) & !word)
            & HIGHS;
        if flags != 0 {
            at += (flags.trailing_zeros() / 8) as usize;
            return (bytes[at] == b'"').then_some(at);
        }
        at += 8;
    }
    loop {
        match *bytes.get(at)? {
            b'"' => return Some(at),
            b'\\' | 0..0x20 => return None,
            _ => at += 1,
        }
    }
}

/// The keys of a wire message, of its `gnss`, `obd` and `power` objects, in the order of the
/// SPEC's example (and of `lienwatch simulate`), which trackers keep; `backfill`, sent only
/// with buffered readings, last. The scanner's objects match a known key by its index here.
const MESSAGE_KEYS: [CompactKey; 11] = CompactKey::all([
    "device_id",
    "ts",
    "seq",
    "gnss",
    "ignition",
    "speed_kmh",
    "odometer_km",
    "obd",
    "power",
    "alarms",
    "backfill",
]);
const GNSS_KEYS: [CompactKey; 8] = CompactKey::all([
    "lat",
    "lon",
    "fix",
    "speed_kmh",
    "heading",
    "alt_m",
    "hdop",
    "sats",
]);
const OBD_KEYS: [CompactKey; 7] = CompactKey::all([
    "rpm",
    "vin",
    "mil",
    "dtc_count",
    "dist_since_clear_km",
    "dist_mil_km",
    "engine_hours",
]);
const POWER_KEYS: [CompactKey; 2] = CompactKey::all(["ext_v", "battery_pct"]);

/// A key as compact JSON writes it, `"name":`, as the little-endian number its bytes make
/// when read from where it starts, with the mask of its bytes: so that looking for it is one
/// load and one comparison. Keys longer than 13 bytes never match and are read as any key is.
#[derive(Clone, Copy)]
struct CompactKey {
    name: &'static str,
    /// Bytes of `"name":`.
    len: usize,
    word: u128,
    mask: u128,
}

impl CompactKey {
    const fn new(name: &'static str) -> Self {
        let bytes = name.as_bytes();
        let len = bytes.len() + 3;
        if len > 16 {
            return Self {
                name,
                len,
                word: 1,
                mask: 0,
            };
        }
        let mut word = b'"' as u128;
        let mut i = 0;
        while i < bytes.len() {
            word |= (bytes[i] as u128) << (8 * (i + 1));
            i += 1;
        }
        word |= (b'"' as u128) << (8 * (len - 2));
        word |= (b':' as u128) << (8 * (len - 1));
        Self {
            name,
            len,
            word,
            mask: u128::MAX >> (128 - 8 * len),
        }
    }

    const fn all<const N: usize>(names: [&'static str; N]) -> [Self; N] {
        let mut keys = [Self::new(""); N];
        let mut i = 0;
        while i < N {
            keys[i] = Self::new(names[i]);
            i += 1;
        }
        keys
    }
}

/// A JSON number as serde would hand it to a visitor.
enum Number {
    /// A non-negative integer literal.
    Unsigned(u64),
    /// A negative integer literal, by its magnitude (serde makes `-0` the float -0.0).
    Negative(u64),
    /// A literal with a fraction or an exponent, converted exactly as serde does.
    Float(f64),
}

impl Number {
    /// The value serde's `f64` visitor produces.
    fn as_f64(&self) -> f64 {
        match *self {
            Number::Unsigned(n) => n as f64,
            Number::Negative(n) => -(n as f64),
            Number::Float(f) => f,
        }
    }
}

struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    /// One wire message from here, ending after its closing brace.
    fn message(&mut self) -> Option<WireMessage<'a>> {
        let mut m = WireMessage::default();
        self.known_object(&MESSAGE_KEYS, |scan, key| {
            match key {
                Some(0) => m.device_id = scan.opt_str()?.map(Cow::Borrowed),
                Some(1) => m.ts = scan.opt_ts()?,
                Some(2) => m.seq = scan.opt_uint(u64::MAX)?,
                Some(3) => m.gnss = scan.opt_gnss()?,
                Some(4) => m.ignition = scan.opt_bool()?,
                Some(5) => m.speed_kmh = scan.opt_f64()?,
                Some(6) => m.odometer_km = scan.opt_f64()?,
                Some(7) => m.obd = scan.opt_obd()?,
                Some(8) => m.power = scan.opt_power()?,
                Some(9) => m.alarms = scan.opt_alarms()?,
                Some(10) => m.backfill = scan.opt_bool()?,
                _ => scan.skip_value(0)?,
            }
            Some(())
        })?;
        Some(m)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// Consumes `null` if it comes next (after whitespace).
    fn null(&mut self) -> bool {
        self.ws();
        self.literal(b"null").is_some()
    }

    /// A string without escapes or control characters.
    fn str(&mut self) -> Option<&'a str> {
        self.ws();
        self.eat(b'"')?;
        let start = self.at;
        let end = string_end(self.bytes, start)?;
        let s = &self.text[start..end];
        self.at = end + 1;
        Some(s)
    }

    /// `{ key: value, ... }`, calling `field` with the scanner positioned before each value.
    fn object(&mut self, mut field: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.known_object(&[], |s, _| field(s))
    }

    /// [`Scan::object`] of an object whose known keys are `keys`, calling `field` with the
    /// index in `keys` of each known key, `None` for any other; `None` (serde's "duplicate
    /// field") if a known key comes twice. Trackers send the keys of an object in one order,
    /// that of `keys`, so after a known key the next one is first looked for as the one after
    /// it in `keys`, written compactly (`"name":`): one masked load and comparison instead of
    /// scanning the key as a string. Any other key is scanned.
    fn known_object(
        &mut self,
        keys: &[CompactKey],
        mut field: impl FnMut(&mut Self, Option<usize>) -> Option<()>,
    ) -> Option<()> {
        let mut next = 0;
        let mut seen = 0u32;
        self.delimited(b'{', b'}', |s| {
            let index = match keys.get(next) {
                Some(expected) if s.compact_key(expected) => Some(next),
                _ => {
                    let key = s.str()?;
                    s.ws();
                    s.eat(b':')?;
                    keys.iter().position(|k| k.name == key)
                }
            };
            if let Some(i) = index {
                let bit = 1 << i;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                next = i + 1;
            }
            field(s, index)
        })
    }

    /// Consumes `key` (`"name":`) if it comes next, exactly so. Reads 8 or 16 bytes from
    /// here, so a key near the end of the text is left to the caller's other path.
    fn compact_key(&mut self, key: &CompactKey) -> bool {
        let word = if key.len <= 8 {
            self.bytes
                .get(self.at..self.at + 8)
                .and_then(|b| b.try_into().ok())
                .map(|b| u128::from(u64::from_le_bytes(b)))
        } else {
            self.bytes
                .get(self.at..self.at + 16)
                .and_then(|b| b.try_into().ok())
                .map(u128::from_le_bytes)
        };
        let found = word.is_some_and(|w| w & key.mask == key.word);
        if found {
            self.at += key.len;
        }
        found
    }

    /// `[ element, ... ]`, calling `element` with the scanner positioned before each one.
    fn array(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.delimited(b'[', b']', element)
    }

    /// `open item, item, ... close`, possibly empty, calling `item` for each.
    fn delimited(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.ws();
        self.eat(open)?;
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                c if c == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Digits from here, accumulated into `mantissa` (wrapping; callers bound the count);
    /// returns how many.
    fn digits(&mut self, mantissa: &mut u64) -> u32 {
        let mut n = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            n += 1;
            self.at += 1;
        }
        n
    }

    /// A number in strict JSON grammar.
    fn number(&mut self) -> Option<Number> {
        self.ws();
        let negative = self.eat(b'-').is_some();
        let mut mantissa = 0u64;
        let mut digits = match self.peek()? {
            // No leading zeros: "0" stands alone before a fraction or an exponent.
            b'0' => {
                self.at += 1;
                1
            }
            b'1'..=b'9' => self.digits(&mut mantissa),
            _ => return None,
        };
        let mut exponent = 0i32;
        let mut float = false;
        if self.eat(b'.').is_some() {
            float = true;
            let fraction = self.digits(&mut mantissa);
            if fraction == 0 {
                return None;
            }
            digits += fraction;
            exponent -= fraction as i32;
        }
        if let Some(b'e' | b'E') = self.peek() {
            float = true;
            self.at += 1;
            let negative_exponent = match self.peek()? {
                b'-' => {
                    self.at += 1;
                    true
                }
                b'+' => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let mut e = 0i32;
            let mut e_digits = 0;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                e = e.checked_mul(10)?.checked_add(i32::from(d - b'0'))?;
                e_digits += 1;
                self.at += 1;
            }
            if e_digits == 0 {
                return None;
            }
            exponent += if negative_exponent { -e } else { e };
        }
        if float {
            // Exact mantissa and power of ten: one correctly rounded operation, as serde does.
            let pow = *POW10.get(exponent.unsigned_abs() as usize)?;
            if digits > 15 {
                return None;
            }
            let f = if exponent >= 0 {
                mantissa as f64 * pow
            } else {
                mantissa as f64 / pow
            };
            Some(Number::Float(if negative { -f } else { f }))
        } else if digits > 18 {
            None
        } else if negative {
            Some(Number::Negative(mantissa))
        } else {
            Some(Number::Unsigned(mantissa))
        }
    }

    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            return Some(None);
        }
        self.str().map(Some)
    }

    fn opt_bool(&mut self) -> Option<Option<bool>> {
        if self.null() {
            return Some(None);
        }
        if self.literal(b"true").is_some() {
            Some(Some(true))
        } else {
            self.literal(b"false").map(|()| Some(false))
        }
    }

    fn opt_f64(&mut self) -> Option<Option<f64>> {
        if self.null() {
            return Some(None);
        }
        self.number().map(|n| Some(n.as_f64()))
    }

    /// An unsigned integer of at most `max`.
    fn opt_uint<T: TryFrom<u64>>(&mut self, max: u64) -> Option<Option<T>> {
        if self.null() {
            return Some(None);
        }
        match self.number()? {
            Number::Unsigned(n) if n <= max => T::try_from(n).ok().map(Some),
            _ => None,
        }
    }

    fn opt_ts(&mut self) -> Option<Option<WireTs<'a>>> {
        if self.null() {
            return Some(None);
        }
        match self.peek()? {
            b'"' => self.str().map(|s| Some(WireTs::Text(Cow::Borrowed(s)))),
            _ => match self.number()? {
                Number::Unsigned(n) => Some(Some(WireTs::Millis(i64::try_from(n).ok()?))),
                Number::Negative(n) => Some(Some(WireTs::Millis(-(n as i64)))),
                Number::Float(_) => None,
            },
        }
    }

    fn opt_gnss(&mut self) -> Option<Option<WireGnss>> {
        if self.null() {
            return Some(None);
        }
        let mut g = WireGnss::default();
        self.known_object(&GNSS_KEYS, |scan, key| {
            match key {
                Some(0) => g.lat = scan.opt_f64()?,
                Some(1) => g.lon = scan.opt_f64()?,
                Some(2) => g.fix = scan.opt_bool()?,
                Some(3) => g.speed_kmh = scan.opt_f64()?,
                Some(4) => g.heading = scan.opt_f64()?,
                Some(5) => g.alt_m = scan.opt_f64()?,
                Some(6) => g.hdop = scan.opt_f64()?,
                Some(7) => g.sats = scan.opt_uint(u16::MAX.into())?,
                _ => scan.skip_value(1)?,
            }
            Some(())
        })?;
        Some(Some(g))
    }

    fn opt_obd(&mut self) -> Option<Option<WireObd<'a>>> {
        if self.null() {
            return Some(None);
        }
        let mut o = WireObd::default();
        self.known_object(&OBD_KEYS, |scan, key| {
            match key {
                Some(0) => o.rpm = scan.opt_f64()?,
                Some(1) => o.vin = scan.opt_str()?.map(Cow::Borrowed),
                Some(2) => o.mil = scan.opt_bool()?,
                Some(3) => o.dtc_count = scan.opt_uint(u32::MAX.into())?,
                Some(4) => o.dist_since_clear_km = scan.opt_f64()?,
                Some(5) => o.dist_mil_km = scan.opt_f64()?,
                Some(6) => o.engine_hours = scan.opt_f64()?,
                _ => scan.skip_value(1)?,
            }
            Some(())
        })?;
        Some(Some(o))
    }

    fn opt_power(&mut self) -> Option<Option<WirePower>> {
        if self.null() {
            return Some(None);
        }
        let mut p = WirePower::default();
        self.known_object(&POWER_KEYS, |scan, key| {
            match key {
                Some(0) => p.ext_v = scan.opt_f64()?,
                Some(1) => p.battery_pct = scan.opt_f64()?,
                _ => scan.skip_value(1)?,
            }
            Some(())
        })?;
        Some(Some(p))
    }

    fn opt_alarms(&mut self) -> Option<Option<Vec<Cow<'a, str>>>> {
        if self.null() {
            return Some(None);
        }
        let mut alarms = Vec::new();
        self.array(|scan| {
            alarms.push(Cow::Borrowed(scan.str()?));
            Some(())
        })?;
        Some(Some(alarms))
    }

    /// Skips any valid JSON value (serde's `IgnoredAny` checks syntax only).
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => self.str().map(drop),
            b'{' => self.object(|scan| scan.skip_value(depth + 1)),
            b'[' => self.array(|scan| scan.skip_value(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.skip_number(),
        }
    }

    /// Skips a number of any size in strict JSON grammar.
    fn skip_number(&mut self) -> Option<()> {
        let digits = |scan: &mut Self| {
            let start = scan.at;
            while let Some(b'0'..=b'9') = scan.peek() {
                scan.at += 1;
            }
            scan.at - start
        };
        self.eat(b'-');
        if self.eat(b'0').is_none() && digits(self) == 0 {
            return None;
        }
        if self.eat(b'.').is_some() && digits(self) == 0 {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::WireMessage;
    use super::{
        GNSS_KEYS, MESSAGE_KEYS, OBD_KEYS, POWER_KEYS, Scan, array_elements, string_end,
        wire_message,
    };

    #[test]
    fn a_compact_key_is_taken_exactly_and_only_so() {
        let keys = MESSAGE_KEYS
            .iter()
            .chain(&GNSS_KEYS)
            .chain(&OBD_KEYS)
            .chain(&POWER_KEYS);
        for key in keys {
            let name = key.name;
            let taken = |text: &str| {
                let mut scan = Scan::new(text);
                let found = scan.compact_key(key);
                (found, scan.at)
            };
            let exact = format!("\"{name}\":1234567890123456");
            let fits = name.len() + 3 <= 16;
            let expected = if fits {
                (true, name.len() + 3)
            } else {
                (false, 0)
            };
            assert_eq!(taken(&exact), expected, "{exact}");
            let short = &name[..name.len() - 1];
            for other in [
                format!("\"{name}\" :1234567890123456"),
                format!("\"{name}x\":1234567890123456"),
                format!("\"{short}\":1234567890123456"),
                format!(" \"{name}\":1234567890123456"),
                format!("\"{}\":1234567890123456", name.to_uppercase()),
            ] {
                assert_eq!(taken(&other), (false, 0), "{other}");
            }
            // At the end of the text: taken only where the bytes read are all there.
            let (found, at) = taken(&format!("\"{name}\":"));
            assert_eq!(found, [8, 16].contains(&(name.len() + 3)), "{name}");
            assert_eq!(at, if found { name.len() + 3 } else { 0 }, "{name}");
        }
    }

    /// `string_end` one byte at a time, as the JSON grammar reads.
    fn string_end_bytewise(bytes: &[u8], from: usize) -> Option<usize> {
        for (at, &b) in bytes.iter().enumerate().skip(from) {
            match b {
                b'"' => return Some(at),
                b'\\' | 0..0x20 => return None,
                _ => {}
            }
        }
        None
    }

    #[test]
    fn a_string_ends_at_its_first_quote_backslash_or_control_character_wherever_it_is() {
        for stop in [b'"', b'\\', 0x00, 0x1f] {
            for len in 0..20 {
                // Bytes next to the ones that stop a string: a borrow across them must not
                // flag the bytes before.
                let mut bytes = vec![b'a'; len];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = [b'!', b'#', b'[', b']', 0x20, 0x7f, 0x80, 0xff, 0x21][i % 9];
                }
                bytes.push(stop);
                bytes.extend_from_slice(b"\"\"\x01 tail");
                for from in 0..=len {
                    assert_eq!(
                        string_end(&bytes, from),
                        string_end_bytewise(&bytes, from),
                        "{bytes:?} from {from}"
                    );
                }
            }
        }
        assert_eq!(string_end(b"abcdefghijklmnop", 0), None);
    }

    /// Messages the scanner must take on its own.
    const PLAIN: [&str; 7] = [
        r#"{"device_id":"865963522144164","ts":1791129600517,"seq":29763,"gnss":{"lat":22.825612,"lon":114.076021,"fix":true,"speed_kmh":0.0,"heading":0,"alt_m":13.2,"hdop":2.2,"sats":10},"ignition":false,"speed_kmh":0,"odometer_km":101481.7,"obd":{"rpm":0,"vin":"LGBYB7EAXRG299761","mil":false,"dtc_count":0,"dist_since_clear_km":22919.9,"dist_mil_km":0.0,"engine_hours":2799.5},"power":{"ext_v":12.51,"battery_pct":88},"alarms":[]}"#,
        r#"{"device_id":"863473381061113","ts":1791129600307,"seq":54776,"gnss":{"lat":43.733946,"lon":87.654975,"fix":true,"speed_kmh":0.0,"heading":0,"alt_m":803.8,"hdop":1.2,"sats":12},"ignition":false,"odometer_km":13746.1,"power":{"ext_v":12.61,"battery_pct":96},"alarms":["tamper","x"],"firmware":"2.1.7"}"#,
        r#" { "device_id" : "d" , "ts" : "2026-11-29T10:00:00Z" , "backfill" : true , "gnss" : null , "extra" : { "a" : [ 1 , -2.5e-3 , true , null , { } , [ ] ] } } "#,
        r#"{"device_id":"d","ts":-5,"gnss":{"lat":-0.5,"lon":-180,"fix":false,"sats":65535},"obd":{"vin":null,"rpm":-0,"dtc_count":4294967295},"power":{},"speed_kmh":1E2}"#,
        r#"{"ts":1764403200000,"seq":18446744073709551,"alarms":null,"odometer_km":1.5e+3}"#,
        "{}",
        r#"{"ts":1791129600517,"x":{"lat":1},"obd":{"vin":"V","rpm":1,"engine_hours":2.5,"odometer_km":3},"device_id":"d","gnss":{"sats":3,"lat":1.5,"lon":2,"hdop":0.5,"alt_m":-1},"backfill":false,"seq":7,"power":{"battery_pct":50,"ext_v":12},"alarms":["sos"],"ignition":true}"#,
    ];

    /// Pieces a mutation inserts: JSON syntax, escapes, edge numbers, known keys.
    const PIECES: [&str; 27] = [
        "\\",
        "\"",
        "null",
        "1e5",
        "-0",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "0",
        "01",
        "1.5",
        "\"ts\":1,",
        "\"lat\":",
        "true",
        "\u{1}",
        "é",
        "99999999999999999999",
        "1234567890.123456789",
        "1e400",
        "\"gnss\":{},",
        "\\u0041",
        "-",
        "9.0",
    ];

    /// What serde makes of `text`, as comparable text (`Debug` tells -0.0 from 0.0).
    fn serde(text: &str) -> Option<String> {
        serde_json::from_str::<WireMessage<'_>>(text)
            .ok()
            .map(|w| format!("{w:?}"))
    }

    #[test]
    fn plain_messages_take_the_fast_path_with_serdes_result() {
        for text in PLAIN {
            let fast = wire_message(text).map(|w| format!("{w:?}"));
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, serde(text), "{text}");
        }
    }

    #[test]
    fn keys_in_any_order_or_near_a_known_one_are_read_as_serde_reads_them() {
        for text in [
            r#"{"device_idx":"a","ts":1,"ts2":2,"seq":3}"#,
            r#"{"device_id":"a","ts_":1,"seq":3,"ts":4}"#,
            r#"{"device_id" :"a","ts": 1, "seq":2}"#,
            r#"{"gnss":{"lon":2,"lat":1,"fixed":true,"fix":false},"obd":{"vin":"V","vins":"W"}}"#,
            r#"{"power":{"ext_v":12,"ext_v2":1,"battery_pct":3},"alarms":[],"backfill":true}"#,
        ] {
            let fast = wire_message(text).map(|w| format!("{w:?}"));
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, serde(text), "{text}");
        }
    }

    #[test]
    fn what_it_declines_serde_decides() {
        for text in [
            r#"{"device_id":"a","ts":1,"device_id":"b"}"#,
            r#"{"ts":1,"device_id":"a","ts":2}"#,
            r#"{"gnss":{"lat":1,"lon":2,"lat":3}}"#,
            r#"{"device_id":"a\"b"}"#,
            r#"{"device_id":"a","device_id":"b"}"#,
            r#"{"seq":1.0}"#,
            r#"{"seq":-1}"#,
            r#"{"gnss":{"sats":65536}}"#,
            r#"{"gnss":{"lat":1e400}}"#,
            r#"{"ts":1.5}"#,
            r#"{"ts":true}"#,
            r#"{"ts":01}"#,
            r#"{} x"#,
            r#"{"odometer_km":123456789.12345678}"#,
        ] {
            assert!(wire_message(text).is_none(), "{text}");
        }
    }

    /// What serde makes of a batch: its elements' text.
    fn serde_elements(text: &str) -> Option<Vec<&str>> {
        serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text)
            .ok()
            .map(|v| v.into_iter().map(|e| e.get()).collect())
    }

    /// The batch scan's elements; each message it read in passing is checked against
    /// `wire_message` of the element's text.
    fn split(text: &str) -> Option<Vec<&str>> {
        let mut elements = Vec::new();
        let count = array_elements(text, |element, message| {
            if let Some(message) = message {
                assert_eq!(
                    Some(format!("{message:?}")),
                    wire_message(element).map(|m| format!("{m:?}")),
                    "{element}"
                );
            }
            elements.push(element);
        })?;
        assert_eq!(count, elements.len());
        Some(elements)
    }

    #[test]
    fn plain_batches_split_as_serde_splits_them() {
        let batch = format!(" [ {} ,{},\n{}] ", PLAIN[0], PLAIN[2], PLAIN[5]);
        let mut read = 0;
        array_elements(&batch, |_, message| read += usize::from(message.is_some()));
        assert_eq!(read, 3, "every plain element is read in the same pass");
        let fast = split(&batch);
        assert_eq!(fast.as_ref().map(Vec::len), Some(3));
        assert_eq!(fast, serde_elements(&batch));
        assert_eq!(split("[]"), Some(vec![]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn batch_split_agrees_with_serde(
            picks in proptest::collection::vec(0..PLAIN.len(), 0..4),
            edits in proptest::collection::vec((0usize..1200, 0usize..4, 0..PIECES.len()), 0..3),
        ) {
            let parts: Vec<&str> = picks.iter().map(|&i| PLAIN[i]).collect();
            let mut text = format!("[{}]", parts.join(","));
            for (at, cut, piece) in edits {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + cut).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(at..end, PIECES[piece]);
            }
            if let Some(fast) = split(&text) {
                prop_assert_eq!(Some(fast), serde_elements(&text), "{}", text);
            }
        }


        #[test]
        fn string_end_agrees_with_the_bytewise_scan(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), 0u8..0x20, Just(0x20u8), 0x21u8..0x80, 0x80u8..=0xff
                ],
                0..40,
            ),
            from in 0usize..40,
        ) {
            let from = from.min(bytes.len());
            prop_assert_eq!(string_end(&bytes, from), string_end_bytewise(&bytes, from));
        }

        #[test]
        fn fast_path_agrees_with_serde(
            base in 0..PLAIN.len(),
            edits in proptest::collection::vec((0usize..400, 0usize..4, 0..PIECES.len()), 1..4),
        ) {
            let mut text = PLAIN[base].to_owned();
            for (at, cut, piece) in edits {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + cut).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(at..end, PIECES[piece]);
            }
            if let Some(fast) = wire_message(&text) {
                prop_assert_eq!(Some(format!("{fast:?}")), serde(&text), "{}", text);
            }
        }
    }
}
