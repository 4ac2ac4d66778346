//! A value with the line of the file it was read from, so that problems found after
//! decoding (a DefaultSubset that does not exist) still name the line.

use std::fmt;

use serde::de::{self, Visitor};

/// A decoded value with the line it was written on, for errors found after decoding
/// (`line 9: no service "web" for DefaultSubset`). Decoded only by
/// `source::document::decode`, which knows the magic names below.
///
/// Two spanned values are equal when their values are: the line says where a value was
/// written, not what it is (the same entry in HCL and YAML is the same entry).
#[derive(Debug, Clone, Default)]
pub struct Spanned<T> {
    pub line: u32,
    pub value: T,
}

/// The struct name by which [`Spanned`] asks the decoder for a line: no real type is named so.
pub(crate) const SPANNED_NAME: &str = "$__meshgate_document_Spanned";
pub(crate) const SPANNED_LINE: &str = "$__meshgate_document_Spanned_line";
pub(crate) const SPANNED_VALUE: &str = "$__meshgate_document_Spanned_value";

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value read by meshgate's document decoder")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let line_key: Option<String> = map.next_key()?;
                if line_key.as_deref() != Some(SPANNED_LINE) {
                    return Err(de::Error::custom(
                        "Spanned can only be decoded by meshgate's document decoder",
                    ));
                }
                let line: u32 = map.next_value()?;
                let _value_key: Option<String> = map.next_key()?;
                let value: T = map.next_value()?;
                Ok(Spanned { line, value })
            }
        }

        deserializer.deserialize_struct(
            SPANNED_NAME,
            &[SPANNED_LINE, SPANNED_VALUE],
            SpannedVisitor(std::marker::PhantomData),
        )
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Spanned<T> {}
