//! OLPC canonical JSON: the byte form of every `signed` object that is signed or verified.
//!
//! Rules (as used by the TUF reference implementation): object keys sorted by code point,
//! no insignificant whitespace, strings escape only `"` and `\`, integers only (no floats).

use serde::Serialize;
use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    /// OLPC canonical JSON has no representation for non-integer numbers.
    #[error("canonical JSON cannot represent the non-integer number {0}")]
    Float(String),
    /// The value could not be turned into JSON at all.
    #[error("value is not representable as JSON: {0}")]
    Serialize(String),
}

/// Returns the canonical bytes of any serializable value.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = serde_json::to_value(value).map_err(|e| CanonicalError::Serialize(e.to_string()))?;
    canonicalize(&v)
}

/// Returns the canonical bytes of a parsed JSON value.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // serde_json's Map is a BTreeMap (no `preserve_order`), so iteration is
            // already sorted by UTF-8 bytes, which is code-point order. Sort anyway if the
            // feature is ever switched on by another crate in the graph.
            let mut keys: Vec<&String> = map.keys().collect();
            if !keys.windows(2).all(|w| w[0] <= w[1]) {
                keys.sort();
            }
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(&map[k.as_str()], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_removed() {
        let v = json!({"b": 1, "a": [true, null, "x"], "c": {"z": 0, "y": -3}});
        assert_eq!(
            canonicalize(&v).unwrap(),
            br#"{"a":[true,null,"x"],"b":1,"c":{"y":-3,"z":0}}"#
        );
    }

    #[test]
    fn only_quote_and_backslash_are_escaped() {
        let v = json!("a\"b\\c\nd\u{e9}");
        assert_eq!(
            canonicalize(&v).unwrap(),
            "\"a\\\"b\\\\c\nd\u{e9}\"".as_bytes()
        );
    }

    #[test]
    fn floats_have_no_canonical_form() {
        assert!(matches!(
            canonicalize(&json!(1.5)),
            Err(CanonicalError::Float(_))
        ));
    }

    #[test]
    fn large_unsigned_integers_are_exact() {
        let v = json!(u64::MAX);
        assert_eq!(canonicalize(&v).unwrap(), u64::MAX.to_string().as_bytes());
    }
}
