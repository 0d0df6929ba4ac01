//! Paths in summond's own JSON (the reload helper's result, the upgrade
//! state), without loss: a path is bytes on Linux, and serde's own
//! `PathBuf` refuses one that is not UTF-8 (a config in a directory named
//! in Latin-1, a program found in such a PATH directory). A UTF-8 path is
//! written as the string it always was, so the format an older image
//! writes or reads is unchanged; any other path as an array of its bytes.
//! Reading takes either. Use with `#[serde(with = "raw_path")]` (a
//! `PathBuf`) or `raw_path::option` (an `Option<PathBuf>`); `Raw` wraps a
//! path inside other types (tuples in the upgrade state).

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A path that serialises as its bytes when it is not UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw(pub PathBuf);

pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    match p.to_str() {
        Some(text) => s.serialize_str(text),
        None => s.serialize_bytes(p.as_os_str().as_bytes()),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    d.deserialize_any(PathVisitor)
}

impl Serialize for Raw {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Raw)
    }
}

/// `Option<PathBuf>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_some(&Raw(p.clone())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<Raw>::deserialize(d)?.map(|r| r.0))
    }
}

struct PathVisitor;

impl<'de> Visitor<'de> for PathVisitor {
    type Value = PathBuf;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path as a string or an array of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<PathBuf, E> {
        Ok(PathBuf::from(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<PathBuf, E> {
        Ok(PathBuf::from(OsString::from_vec(v.to_vec())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PathBuf, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "super")]
        path: PathBuf,
        #[serde(with = "super::option")]
        maybe: Option<PathBuf>,
    }

    #[test]
    fn a_path_that_is_not_utf8_goes_and_comes_back_as_bytes() {
        let odd = PathBuf::from(OsString::from_vec(b"/tmp/nu\xff/s.toml".to_vec()));
        for v in [
            Both {
                path: odd.clone(),
                maybe: Some(odd.clone()),
            },
            Both {
                path: PathBuf::from("/etc/summond.toml"),
                maybe: None,
            },
        ] {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Both>(&json).unwrap(), v, "{json}");
        }
    }

    #[test]
    fn a_utf8_path_is_the_string_it_always_was() {
        let v = Both {
            path: PathBuf::from("/etc/summond.toml"),
            maybe: Some(PathBuf::from("/run/s.sock")),
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"path":"/etc/summond.toml","maybe":"/run/s.sock"}"#
        );
    }
}
