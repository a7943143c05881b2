//! OLPC canonical JSON: the byte form of every `signed` object that is signed or verified.
//!
//! Rules (as used by the TUF reference implementation): object keys sorted by code point,
//! no insignificant whitespace, strings escape only `"` and `\`, integers only (no floats).
//!
//! [`to_canonical`] serializes any `Serialize` value straight to canonical bytes (a
//! `serde::Serializer`), without building a `serde_json::Value` first: objects are written
//! in place and re-ordered only when their keys did not arrive sorted, so a role with
//! 100 000 targets costs one pass and no allocation per entry. Its output is the same as
//! converting the value with `serde_json::to_value` and calling [`canonicalize`] on that
//! (tests compare the two on arbitrary JSON and on metadata).

use std::fmt;

use serde::ser;
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
    let mut w = Writer::default();
    value.serialize(&mut w).map_err(|e| e.0)?;
    Ok(w.out)
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
                write_i64(i, out);
            } else if let Some(u) = n.as_u64() {
                write_u64(u, out);
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

/// Writes a string with only `"` and `\` escaped, copying unescaped runs in bulk.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' {
            out.extend_from_slice(&bytes[start..i]);
            out.push(b'\\');
            start = i;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_u64(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_i64(v: i64, out: &mut Vec<u8>) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(v.unsigned_abs(), out);
}

/// The error of the direct serializer (a [`CanonicalError`] that serde can build).
#[derive(Debug)]
struct SerError(CanonicalError);

impl fmt::Display for SerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SerError {}

impl ser::Error for SerError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        SerError(CanonicalError::Serialize(msg.to_string()))
    }
}

fn out_of_range() -> SerError {
    SerError(CanonicalError::Serialize("number out of range".into()))
}

fn key_must_be_a_string() -> SerError {
    SerError(CanonicalError::Serialize("key must be a string".into()))
}

/// One member of an object being written: its raw key (a range of `Writer::keys`) and
/// the bytes `"key":value` (a range of `Writer::out`).
#[derive(Clone, Copy)]
struct Entry {
    key: (usize, usize),
    chunk: (usize, usize),
}

/// The direct serializer's state. Objects keep their members' positions on a shared stack
/// (`entries`, `keys`); nested objects finish before their parent continues.
#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    /// Raw (unescaped) keys of the members of all open objects.
    keys: Vec<u8>,
    /// Members of all open objects, innermost last.
    entries: Vec<Entry>,
    /// Scratch space for re-ordering an object.
    tmp: Vec<u8>,
}

impl<'a> ser::Serializer for &'a mut Writer {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), SerError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), SerError> {
        write_i64(v, &mut self.out);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), SerError> {
        if let Ok(u) = u64::try_from(v) {
            self.serialize_u64(u)
        } else if let Ok(i) = i64::try_from(v) {
            self.serialize_i64(i)
        } else {
            Err(out_of_range())
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), SerError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), SerError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), SerError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), SerError> {
        write_u64(v, &mut self.out);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), SerError> {
        u64::try_from(v)
            .map_err(|_| out_of_range())
            .and_then(|u| self.serialize_u64(u))
    }
    fn serialize_f32(self, v: f32) -> Result<(), SerError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), SerError> {
        // As `serde_json::to_value`: non-finite numbers become null; any other float has
        // no canonical form.
        match serde_json::Number::from_f64(v) {
            None => {
                self.out.extend_from_slice(b"null");
                Ok(())
            }
            Some(n) => Err(SerError(CanonicalError::Float(n.to_string()))),
        }
    }
    fn serialize_char(self, v: char) -> Result<(), SerError> {
        write_string(v.encode_utf8(&mut [0u8; 4]), &mut self.out);
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), SerError> {
        write_string(v, &mut self.out);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), SerError> {
        let mut seq = ser::Serializer::serialize_seq(self, Some(v.len()))?;
        for b in v {
            ser::SerializeSeq::serialize_element(&mut seq, b)?;
        }
        ser::SerializeSeq::end(seq)
    }
    fn serialize_none(self) -> Result<(), SerError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), SerError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), SerError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), SerError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), SerError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        // An object with one member: nothing to sort.
        self.out.push(b'{');
        write_string(variant, &mut self.out);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, SerError> {
        self.out.push(b'[');
        Ok(Seq {
            w: self,
            first: true,
            close: b"]",
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, SerError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq<'a>, SerError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a>, SerError> {
        self.out.push(b'{');
        write_string(variant, &mut self.out);
        self.out.extend_from_slice(b":[");
        Ok(Seq {
            w: self,
            first: true,
            close: b"]}",
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, SerError> {
        Ok(Object::open(self, b"}"))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Object<'a>, SerError> {
        Ok(Object::open(self, b"}"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, SerError> {
        self.out.push(b'{');
        write_string(variant, &mut self.out);
        self.out.push(b':');
        Ok(Object::open(self, b"}}"))
    }
}

/// An array being written (also a tuple variant's array, closed by `close`).
struct Seq<'a> {
    w: &'a mut Writer,
    first: bool,
    close: &'static [u8],
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerError> {
        if !self.first {
            self.w.out.push(b',');
        }
        self.first = false;
        value.serialize(&mut *self.w)
    }
    fn finish(self) -> Result<(), SerError> {
        self.w.out.extend_from_slice(self.close);
        Ok(())
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Seq<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

/// An object being written. Members are written in arrival order; [`Object::finish`]
/// re-orders them by key (the last of equal keys wins, as in a JSON map) unless they
/// arrived sorted, the usual case for `BTreeMap`s.
struct Object<'a> {
    w: &'a mut Writer,
    /// Index of this object's first member in `w.entries`.
    base: usize,
    /// Length of `w.keys` when the object was opened.
    keys_base: usize,
    /// Offset in `w.out` just after `{`.
    start: usize,
    /// The member whose key was written and whose value is next.
    pending: Option<(usize, usize, usize)>,
    close: &'static [u8],
}

impl<'a> Object<'a> {
    fn open(w: &'a mut Writer, close: &'static [u8]) -> Self {
        w.out.push(b'{');
        Object {
            base: w.entries.len(),
            keys_base: w.keys.len(),
            start: w.out.len(),
            pending: None,
            close,
            w,
        }
    }

    /// Starts a member whose key `write_key` records (raw in `keys`, quoted in `out`).
    fn begin(
        &mut self,
        write_key: impl FnOnce(&mut Writer) -> Result<(), SerError>,
    ) -> Result<(), SerError> {
        if self.w.entries.len() > self.base {
            self.w.out.push(b',');
        }
        let chunk_start = self.w.out.len();
        let key_start = self.w.keys.len();
        write_key(self.w)?;
        self.pending = Some((key_start, self.w.keys.len(), chunk_start));
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerError> {
        let (k0, k1, chunk_start) = self
            .pending
            .take()
            .ok_or_else(|| ser::Error::custom("object value without a key"))?;
        self.w.out.push(b':');
        value.serialize(&mut *self.w)?;
        self.w.entries.push(Entry {
            key: (k0, k1),
            chunk: (chunk_start, self.w.out.len()),
        });
        Ok(())
    }

    fn finish(self) -> Result<(), SerError> {
        let w = self.w;
        let keys = &w.keys;
        let key = |e: &Entry| &keys[e.key.0..e.key.1];
        let members = &mut w.entries[self.base..];
        if !members.windows(2).all(|p| key(&p[0]) < key(&p[1])) {
            members.sort_by(|a, b| key(a).cmp(key(b))); // stable: equal keys keep their order
            let mut tmp = std::mem::take(&mut w.tmp);
            tmp.clear();
            tmp.extend_from_slice(&w.out[self.start..]);
            w.out.truncate(self.start);
            let mut first = true;
            for (i, e) in members.iter().enumerate() {
                if members.get(i + 1).is_some_and(|next| key(next) == key(e)) {
                    continue; // a later member has the same key and replaces this one
                }
                if !first {
                    w.out.push(b',');
                }
                first = false;
                w.out
                    .extend_from_slice(&tmp[e.chunk.0 - self.start..e.chunk.1 - self.start]);
            }
            w.tmp = tmp;
        }
        w.entries.truncate(self.base);
        w.keys.truncate(self.keys_base);
        w.out.extend_from_slice(self.close);
        Ok(())
    }
}

fn static_key(name: &'static str) -> impl FnOnce(&mut Writer) -> Result<(), SerError> {
    move |w: &mut Writer| {
        w.keys.extend_from_slice(name.as_bytes());
        write_string(name, &mut w.out);
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), SerError> {
        self.begin(|w| key.serialize(KeyWriter(w)))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerError> {
        self.value(value)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        self.begin(static_key(name))?;
        self.value(value)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        self.begin(static_key(name))?;
        self.value(value)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

/// Writes an object key: strings, and what `serde_json` turns into strings (chars,
/// integers, booleans, unit variants, newtypes of those). Anything else is refused.
struct KeyWriter<'a>(&'a mut Writer);

impl KeyWriter<'_> {
    fn text(self, s: &str) -> Result<(), SerError> {
        self.0.keys.extend_from_slice(s.as_bytes());
        write_string(s, &mut self.0.out);
        Ok(())
    }
    fn integer(self, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), SerError> {
        let mut digits = Vec::with_capacity(20);
        write(&mut digits);
        self.0.keys.extend_from_slice(&digits);
        self.0.out.push(b'"');
        self.0.out.extend_from_slice(&digits);
        self.0.out.push(b'"');
        Ok(())
    }
}

impl ser::Serializer for KeyWriter<'_> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = ser::Impossible<(), SerError>;
    type SerializeTuple = ser::Impossible<(), SerError>;
    type SerializeTupleStruct = ser::Impossible<(), SerError>;
    type SerializeTupleVariant = ser::Impossible<(), SerError>;
    type SerializeMap = ser::Impossible<(), SerError>;
    type SerializeStruct = ser::Impossible<(), SerError>;
    type SerializeStructVariant = ser::Impossible<(), SerError>;

    fn serialize_bool(self, v: bool) -> Result<(), SerError> {
        self.text(if v { "true" } else { "false" })
    }
    fn serialize_i8(self, v: i8) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), SerError> {
        self.integer(|o| write_i64(v, o))
    }
    fn serialize_i128(self, v: i128) -> Result<(), SerError> {
        let s = v.to_string();
        self.text(&s)
    }
    fn serialize_u8(self, v: u8) -> Result<(), SerError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), SerError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), SerError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), SerError> {
        self.integer(|o| write_u64(v, o))
    }
    fn serialize_u128(self, v: u128) -> Result<(), SerError> {
        let s = v.to_string();
        self.text(&s)
    }
    fn serialize_f32(self, _v: f32) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_f64(self, _v: f64) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_char(self, v: char) -> Result<(), SerError> {
        self.text(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), SerError> {
        self.text(v)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), SerError> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, SerError> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, SerError> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// The canonical form as it was computed before the direct serializer: through a
    /// `serde_json::Value`.
    fn via_value<T: Serialize>(value: &T) -> Result<Vec<u8>, CanonicalError> {
        let v =
            serde_json::to_value(value).map_err(|e| CanonicalError::Serialize(e.to_string()))?;
        canonicalize(&v)
    }

    #[test]
    fn keys_are_sorted_and_whitespace_removed() {
        let v = json!({"b": 1, "a": [true, null, "x"], "c": {"z": 0, "y": -3}});
        assert_eq!(
            canonicalize(&v).unwrap(),
            br#"{"a":[true,null,"x"],"b":1,"c":{"y":-3,"z":0}}"#
        );
        assert_eq!(to_canonical(&v).unwrap(), canonicalize(&v).unwrap());
    }

    #[test]
    fn only_quote_and_backslash_are_escaped() {
        let v = json!("a\"b\\c\nd\u{e9}");
        let want = "\"a\\\"b\\\\c\nd\u{e9}\"".as_bytes();
        assert_eq!(canonicalize(&v).unwrap(), want);
        assert_eq!(to_canonical(&v).unwrap(), want);
    }

    #[test]
    fn floats_have_no_canonical_form() {
        assert!(matches!(
            canonicalize(&json!(1.5)),
            Err(CanonicalError::Float(_))
        ));
        assert_eq!(
            to_canonical(&1.5f64),
            Err(CanonicalError::Float("1.5".into()))
        );
        assert!(matches!(
            to_canonical(&json!({"a": [1, 2.25]})),
            Err(CanonicalError::Float(_))
        ));
    }

    #[test]
    fn large_unsigned_integers_are_exact() {
        let v = json!(u64::MAX);
        assert_eq!(canonicalize(&v).unwrap(), u64::MAX.to_string().as_bytes());
        assert_eq!(
            to_canonical(&u64::MAX).unwrap(),
            u64::MAX.to_string().as_bytes()
        );
        assert_eq!(
            to_canonical(&i64::MIN).unwrap(),
            i64::MIN.to_string().as_bytes()
        );
    }

    /// Struct fields arrive in declaration order and must still come out sorted; keys are
    /// compared raw, not in their escaped form (`a"` sorts before `a#`, though `\` > `#`).
    #[test]
    fn struct_fields_and_escaped_keys_are_sorted_by_raw_code_point() {
        #[derive(Serialize)]
        struct S {
            zeta: u32,
            alpha: Option<String>,
            #[serde(rename = "_type")]
            kind: &'static str,
            #[serde(flatten)]
            extra: BTreeMap<String, Value>,
        }
        let mut extra = BTreeMap::new();
        extra.insert("a#".to_string(), json!(1));
        extra.insert("a\"".to_string(), json!({"y": [], "x": {}}));
        let s = S {
            zeta: 7,
            alpha: None,
            kind: "t",
            extra,
        };
        let got = to_canonical(&s).unwrap();
        assert_eq!(got, via_value(&s).unwrap());
        assert_eq!(
            String::from_utf8(got).unwrap(),
            r#"{"_type":"t","a\"":{"x":{},"y":[]},"a#":1,"alpha":null,"zeta":7}"#
        );
    }

    /// A key given twice (a flattened map repeating a field) keeps the last value, as a
    /// JSON map built from the same calls would.
    #[test]
    fn a_repeated_key_keeps_the_last_value() {
        #[derive(Serialize)]
        struct S {
            b: u32,
            #[serde(flatten)]
            extra: BTreeMap<String, u32>,
        }
        let s = S {
            b: 1,
            extra: [("a".to_string(), 2), ("b".to_string(), 3)].into(),
        };
        assert_eq!(to_canonical(&s).unwrap(), br#"{"a":2,"b":3}"#);
        assert_eq!(to_canonical(&s).unwrap(), via_value(&s).unwrap());
    }

    #[test]
    fn enums_integer_keys_and_bytes_match_the_value_route() {
        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, String),
            Struct { z: bool, a: () },
        }
        let v = (
            vec![
                E::Unit,
                E::New(3),
                E::Tuple(1, "x".into()),
                E::Struct { z: true, a: () },
            ],
            BTreeMap::from([(10u32, 'c'), (2u32, 'd')]),
            serde_bytes_like(&[1, 2, 255]),
            f64::NAN,
        );
        assert_eq!(to_canonical(&v).unwrap(), via_value(&v).unwrap());
    }

    /// `&[u8]` through `serialize_bytes`.
    fn serde_bytes_like(b: &'static [u8]) -> impl Serialize {
        struct B(&'static [u8]);
        impl Serialize for B {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }

    /// Every well-formed metadata file among the fixtures: the direct serializer on the
    /// typed metadata gives exactly the canonical bytes of what was signed (the raw
    /// `signed` object), and the same bytes as the `Value` route.
    #[test]
    fn typed_metadata_from_the_fixtures_serializes_to_the_signed_bytes() {
        use crate::tuf::schema::{RawSigned, Root, Snapshot, Targets, Timestamp};
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/good/repo/metadata");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let raw = RawSigned::from_bytes(&bytes).unwrap();
            let want = canonicalize(&raw.signed).unwrap();
            let got = match raw.type_field() {
                Some("root") => to_canonical(&raw.clone().typed::<Root>().unwrap().signed),
                Some("targets") => to_canonical(&raw.clone().typed::<Targets>().unwrap().signed),
                Some("snapshot") => to_canonical(&raw.clone().typed::<Snapshot>().unwrap().signed),
                Some("timestamp") => {
                    to_canonical(&raw.clone().typed::<Timestamp>().unwrap().signed)
                }
                other => panic!("{}: unexpected _type {other:?}", path.display()),
            }
            .unwrap();
            assert_eq!(got, want, "{}", path.display());
            assert_eq!(
                to_canonical(&raw.signed).unwrap(),
                want,
                "{}",
                path.display()
            );
            checked += 1;
        }
        assert!(
            checked >= 4,
            "only {checked} fixture files found in {}",
            dir.display()
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            ".{0,8}".prop_map(Value::String),
            "[\"\\\\a-c]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[\"\\\\a-c\u{e9}\u{1F600}]{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The direct serializer produces exactly the bytes of the `Value` route on
        /// arbitrary JSON.
        #[test]
        fn direct_serializer_matches_the_value_route(v in arb_json()) {
            prop_assert_eq!(to_canonical(&v).unwrap(), canonicalize(&v).unwrap());
        }

        /// Same for a struct whose fields arrive unsorted around a flattened map of
        /// arbitrary extra members (how metadata carries unrecognized fields).
        #[test]
        fn direct_serializer_matches_on_structs_with_flattened_fields(
            extra in prop::collection::btree_map("[a-z_\"]{0,6}", arb_json(), 0..6),
            n in any::<u64>(),
            s in ".{0,6}",
        ) {
            #[derive(Serialize)]
            struct Meta<'a> {
                version: u64,
                name: &'a str,
                hashes: BTreeMap<&'a str, &'a str>,
                custom: Option<&'a Value>,
                #[serde(flatten)]
                extra: &'a BTreeMap<String, Value>,
            }
            let hashes = BTreeMap::from([("sha512", s.as_str()), ("sha256", "x")]);
            let m = Meta { version: n, name: &s, hashes, custom: extra.values().next(), extra: &extra };
            prop_assert_eq!(to_canonical(&m).unwrap(), via_value(&m).unwrap());
        }
    }
}
