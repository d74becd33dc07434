//! Finding the line of an item of a TOML or JSON document by its key path.
//!
//! Neither `toml` nor `serde_json` keeps positions in a deserialised struct, but both put
//! a position on an error raised while they read. So the document is read a second time
//! with a visitor that walks the path and fails on reaching it; the error's position is
//! the item's. For JSON the failure is raised right after the last key (serde_json's
//! position is then on the key's line); for TOML it is raised while reading the value
//! (toml then gives the value's span). A JSON array element is found at its first line of
//! content.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Where the failure is raised.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// Right after the last key, before its value (JSON).
    AfterKey,
    /// Inside the value (TOML).
    InValue,
}

/// The marker message of the located failure.
const FOUND: &str = "heurist-points: located";

struct Walk<'a> {
    path: &'a [String],
    mode: Mode,
}

struct Fail;

impl<'de> DeserializeSeed<'de> for Fail {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Fail {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match self.path.split_first() {
                Some((head, rest)) if *head == key => {
                    if rest.is_empty() {
                        return match self.mode {
                            Mode::AfterKey => Err(de::Error::custom(FOUND)),
                            Mode::InValue => map.next_value_seed(Fail),
                        };
                    }
                    map.next_value_seed(Walk { path: rest, mode: self.mode })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let target = self.path.split_first().and_then(|(h, rest)| h.parse::<usize>().ok().map(|i| (i, rest)));
        let mut index = 0usize;
        loop {
            let more = match target {
                Some((i, rest)) if i == index => {
                    if rest.is_empty() {
                        seq.next_element_seed(Fail)?
                    } else {
                        seq.next_element_seed(Walk { path: rest, mode: self.mode })?
                    }
                }
                _ => seq.next_element::<IgnoredAny>()?.map(|_| ()),
            };
            if more.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }
}

/// The 1-based line of the TOML item at `path`, if found.
pub(crate) fn toml_line(text: &str, path: &[String]) -> Option<usize> {
    let de = toml::de::Deserializer::parse(text).ok()?;
    match (Walk { path, mode: Mode::InValue }).deserialize(de) {
        Err(e) if e.message().contains(FOUND) => e.span().map(|s| super::line_of(text, s.start)),
        _ => None,
    }
}

/// The 1-based line of the JSON item at `path`, if found.
pub(crate) fn json_line(text: &str, path: &[String]) -> Option<usize> {
    let mut de = serde_json::Deserializer::from_str(text);
    match (Walk { path, mode: Mode::AfterKey }).deserialize(&mut de) {
        Err(e) if e.to_string().contains(FOUND) => Some(e.line()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn finds_toml_items() {
        let t = "a = 1\n\n[cat.sdxl]\nmultiplier = -1\n\n[[tiers]]\nmin = 1\n[[tiers]]\nmin = 2\nmax = 3\n";
        assert_eq!(toml_line(t, &p(&["cat", "sdxl", "multiplier"])), Some(4));
        assert_eq!(toml_line(t, &p(&["tiers", "1", "max"])), Some(10));
        assert_eq!(toml_line(t, &p(&["tiers", "1"])), Some(8));
        assert_eq!(toml_line(t, &p(&["cat", "nope"])), None);
    }

    #[test]
    fn finds_json_items() {
        let j = "{\n \"a\": 1,\n \"cat\": {\n  \"sdxl\": {\n   \"multiplier\": -1\n  }\n },\n \"tiers\": [\n  {\"min\": 1},\n  {\n   \"min\": 2,\n   \"max\": 3\n  }\n ]\n}";
        assert_eq!(json_line(j, &p(&["cat", "sdxl", "multiplier"])), Some(5));
        assert_eq!(json_line(j, &p(&["tiers", "1", "max"])), Some(12));
        // An element is found at its first line of content (serde_json reads past the
        // whitespace after `{` before it reports).
        assert_eq!(json_line(j, &p(&["tiers", "1"])), Some(11));
        assert_eq!(json_line(j, &p(&["nope"])), None);
    }
}
