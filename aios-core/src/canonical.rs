//! The canonical binary encoding hashed into the audit chain.
//!
//! A small serde serializer whose output is injective (two different values never encode to
//! the same bytes), compact (ids are 16 raw bytes, nothing is escaped) and stable (it depends
//! only on the serialised shape of the value, documented here), so an external verifier can
//! reimplement it. It reports itself as not human-readable, which makes UUIDs serialise as
//! bytes.
//!
//! Every item starts with a tag byte:
//!
//! | tag | item | followed by |
//! |---|---|---|
//! | 0x01 | bool | one byte, 0 or 1 |
//! | 0x02 | signed integer | i64, little-endian |
//! | 0x03 | unsigned integer | u64, little-endian |
//! | 0x04 | 128-bit integer | 16 bytes, little-endian |
//! | 0x05 | float | the f64 bits, little-endian |
//! | 0x06 | char | u32, little-endian |
//! | 0x07 | string | u64 length, UTF-8 bytes |
//! | 0x08 | bytes | u64 length, bytes |
//! | 0x09 / 0x0A | none / some | nothing / the value |
//! | 0x0B | unit | nothing |
//! | 0x0C | unit struct | its name (as a string item) |
//! | 0x0D | unit variant | the variant name (as a string item) |
//! | 0x0E | newtype struct | the value |
//! | 0x0F | newtype variant | the variant name, the value |
//! | 0x10 | sequence | the elements, then 0x11 |
//! | 0x12 | tuple or tuple struct | the elements, then 0x11 |
//! | 0x13 | tuple variant | the variant name, the elements, then 0x11 |
//! | 0x14 | map | key, value pairs, then 0x11 |
//! | 0x15 | struct | (field name, value) pairs of the fields present, then 0x11 |
//! | 0x16 | struct variant | the variant name, then as a struct |

use serde::ser::{self, Serialize};

/// Why a value could not be encoded (only a `Serialize` impl's own error can cause it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct EncodeError(String);

impl ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        EncodeError(msg.to_string())
    }
}

/// Appends the canonical encoding of `value` to `out`.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    value.serialize(&mut Encoder { out })
}

struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

const END: u8 = 0x11;

impl Encoder<'_> {
    fn tag(&mut self, tag: u8) {
        self.out.push(tag);
    }

    fn str(&mut self, s: &str) {
        self.out.push(0x07);
        self.out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }
}

impl<'a, 'b> ser::Serializer for &'a mut Encoder<'b> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&[0x01, u8::from(v)]);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        self.tag(0x02);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        self.tag(0x04);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        self.tag(0x03);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        self.tag(0x04);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.tag(0x05);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        self.tag(0x06);
        self.out.extend_from_slice(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.str(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        self.tag(0x08);
        self.out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.tag(0x09);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.tag(0x0A);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        self.tag(0x0B);
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<(), EncodeError> {
        self.tag(0x0C);
        self.str(name);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.tag(0x0D);
        self.str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.tag(0x0E);
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.tag(0x0F);
        self.str(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, EncodeError> {
        self.tag(0x10);
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, EncodeError> {
        self.tag(0x12);
        Ok(self)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        self.tag(0x12);
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.tag(0x13);
        self.str(variant);
        Ok(self)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, EncodeError> {
        self.tag(0x14);
        Ok(self)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        self.tag(0x15);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.tag(0x16);
        self.str(variant);
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.tag(END);
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.tag(END);
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.tag(END);
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.tag(END);
        Ok(())
    }
}

impl ser::SerializeMap for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.tag(END);
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.str(key);
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.tag(END);
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.str(key);
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.tag(END);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn bytes<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, &mut out).unwrap();
        out
    }

    #[derive(Serialize)]
    struct Two {
        #[serde(skip_serializing_if = "Option::is_none")]
        a: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        b: Option<u8>,
    }

    #[test]
    fn skipped_fields_stay_distinguishable() {
        // the ambiguity a positional encoding would have: only `a` vs only `b`
        assert_ne!(
            bytes(&Two {
                a: Some(1),
                b: None
            }),
            bytes(&Two {
                a: None,
                b: Some(1)
            })
        );
    }

    #[test]
    fn values_of_different_shapes_never_collide() {
        let values = [
            serde_json::json!(null),
            serde_json::json!(false),
            serde_json::json!(0),
            serde_json::json!(0.0),
            serde_json::json!(""),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!([null]),
            serde_json::json!(["", ""]),
            serde_json::json!([""]),
            serde_json::json!({"a": ""}),
            serde_json::json!({"": "a"}),
            serde_json::json!("a\u{0}"),
        ];
        let encoded: Vec<Vec<u8>> = values.iter().map(bytes).collect();
        for i in 0..encoded.len() {
            for j in i + 1..encoded.len() {
                assert_ne!(encoded[i], encoded[j], "{} vs {}", values[i], values[j]);
            }
        }
    }

    #[test]
    fn uuids_are_sixteen_raw_bytes() {
        let id = uuid::Uuid::from_u128(7);
        let out = bytes(&id);
        assert_eq!(out[0], 0x08);
        assert_eq!(out.len(), 1 + 8 + 16);
    }
}
