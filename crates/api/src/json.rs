//! Helpers for the stout JSON mapping: lenient numbers on input, base64 bytes.
use base64::Engine as _;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

struct F64Visitor;

impl Visitor<'_> for F64Visitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, a numeric string, or \"Infinity\"")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v.trim() {
            "Infinity" | "inf" | "+Infinity" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            s => s.parse::<f64>().map_err(|_| E::custom(format!("'{v}' is not a number"))),
        }
    }
}

/// A double that also accepts numeric strings and `"Infinity"`.
pub fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(F64Visitor)
}

/// An optional double that also accepts numeric strings and `"Infinity"`.
pub fn lenient_opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "lenient_f64")] f64);
    Option::<W>::deserialize(d).map(|o| o.map(|w| w.0))
}

/// A list decoded into a vector of exactly its length. The default grows by doubling from
/// four, so a task's lone status or two resources took room for four, and a re-registration
/// storm of 400,000 tasks touched hundreds of megabytes of fresh memory for that room
/// (measured: growing these vectors was a tenth of the master's CPU during a failover).
/// Up to four elements are held on the stack until the list's length is known.
pub fn exact_vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct ExactVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ExactVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut head: [Option<T>; 4] = [None, None, None, None];
            let mut n = 0;
            while n < head.len() {
                match seq.next_element()? {
                    Some(x) => head[n] = Some(x),
                    None => break,
                }
                n += 1;
            }
            if n < head.len() {
                let mut v = Vec::with_capacity(n);
                v.extend(head.into_iter().flatten());
                return Ok(v);
            }
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).max(2 * head.len()));
            v.extend(head.into_iter().flatten());
            while let Some(x) = seq.next_element()? {
                v.push(x);
            }
            v.shrink_to_fit();
            Ok(v)
        }
    }
    d.deserialize_seq(ExactVisitor(PhantomData))
}

/// Writes non-finite doubles as the strings stout uses; finite ones as numbers.
pub fn write_f64<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_infinite() {
        s.serialize_str(if *v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*v)
    }
}

struct I64Visitor;

impl Visitor<'_> for I64Visitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer or a numeric string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9.0e18 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.trim().parse::<i64>().map_err(|_| E::custom(format!("'{v}' is not an integer")))
    }
}

/// An integer that also accepts numeric strings.
pub fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(I64Visitor)
}

/// An unsigned integer that also accepts numeric strings.
pub fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = d.deserialize_any(I64Visitor)?;
    u64::try_from(v).map_err(|_| de::Error::custom("negative value where an unsigned integer is expected"))
}

/// `bytes` fields: base64 in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        decode_b64(&s).map(Bytes).map_err(de::Error::custom)
    }
}

/// Decodes standard or URL-safe base64, padded or not.
pub fn decode_b64(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(v) = engine.decode(s) {
            return Ok(v);
        }
    }
    Err(format!("'{s}' is not valid base64"))
}

impl Bytes {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Serialises a value as compact JSON with every non-ASCII character escaped, so that
/// clients that slice RecordIO records by character count (mesoshttp) see the right length.
pub fn to_ascii_json<T: Serialize>(v: &T) -> Vec<u8> {
    let s = match serde_json::to_string(v) {
        Ok(s) => s,
        Err(e) => format!("{{\"error\":{:?}}}", e.to_string()),
    };
    if s.is_ascii() {
        return s.into_bytes();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct D {
        #[serde(deserialize_with = "lenient_f64")]
        v: f64,
    }

    #[test]
    fn lists_decode_to_exactly_their_length() {
        #[derive(Deserialize)]
        struct L {
            #[serde(default, deserialize_with = "exact_vec")]
            v: Vec<String>,
        }
        for n in 0..12 {
            let items: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
            let l: L = serde_json::from_value(serde_json::json!({ "v": items })).unwrap();
            assert_eq!(l.v, items);
            assert_eq!(l.v.capacity(), n, "{n} elements");
        }
        let l: L = serde_json::from_str("{}").unwrap();
        assert!(l.v.is_empty());
        for bad in [r#"{"v":null}"#, r#"{"v":"x"}"#, r#"{"v":[1]}"#, r#"{"v":["a","b","c","d","e",2]}"#] {
            assert!(serde_json::from_str::<L>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lenient_doubles() {
        let d: D = serde_json::from_str(r#"{"v":"Infinity"}"#).unwrap();
        assert!(d.v.is_infinite());
        let d: D = serde_json::from_str(r#"{"v":"2.5"}"#).unwrap();
        assert_eq!(d.v, 2.5);
        let d: D = serde_json::from_str(r#"{"v":3}"#).unwrap();
        assert_eq!(d.v, 3.0);
        assert!(serde_json::from_str::<D>(r#"{"v":"x"}"#).is_err());
    }

    #[test]
    fn ascii_json_escapes_non_ascii() {
        let out = to_ascii_json(&serde_json::json!({"m": "héllo 😀"}));
        let s = String::from_utf8(out).unwrap();
        assert!(s.is_ascii());
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["m"], "héllo 😀");
    }
}
