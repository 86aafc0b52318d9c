//! Serde adapters for ids held as `Arc<str>` (shared with the registry), written as plain
//! strings: the same bytes as a `String` field, without serde's `rc` feature, which would
//! rebuild every serde user for two fields.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serializer};

/// `#[serde(with = "schemas::shared_str")]` on an `Arc<str>`.
pub fn serialize<S: Serializer>(id: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(id)
}

/// See [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    Ok(<std::borrow::Cow<'de, str>>::deserialize(d)?.into())
}

/// `#[serde(with = "schemas::shared_str::option")]` on an `Option<Arc<str>>`.
pub mod option {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `None` as none and `Some` as its string.
    pub fn serialize<S: Serializer>(id: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_some(&**id),
            None => s.serialize_none(),
        }
    }

    /// See [`serialize`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
        Ok(<Option<std::borrow::Cow<'de, str>>>::deserialize(d)?.map(Arc::from))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ids {
        #[serde(with = "super")]
        id: Arc<str>,
        #[serde(with = "super::option", default)]
        other: Option<Arc<str>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        id: String,
        other: Option<String>,
    }

    #[test]
    fn written_and_read_as_plain_strings() {
        for (ids, plain) in [
            (
                Ids {
                    id: "V1".into(),
                    other: Some("L\"1".into()),
                },
                Plain {
                    id: "V1".into(),
                    other: Some("L\"1".into()),
                },
            ),
            (
                Ids {
                    id: "".into(),
                    other: None,
                },
                Plain {
                    id: "".into(),
                    other: None,
                },
            ),
        ] {
            let json = serde_json::to_string(&ids).unwrap();
            assert_eq!(json, serde_json::to_string(&plain).unwrap());
            assert_eq!(serde_json::from_str::<Ids>(&json).unwrap(), ids);
        }
        let escaped: Ids = serde_json::from_str(r#"{"id":"V\u0031","other":null}"#).unwrap();
        assert_eq!((&*escaped.id, escaped.other), ("V1", None));
    }
}
