//! [`Text`]: a message's text as shared bytes, checked to be UTF-8 once, where it enters a
//! process (a client's frame, the bus). What members receive as WebSocket text frames; the
//! routing and the carriers pass it on without knowing the WebSocket library.

use std::fmt;

use bytes::Bytes;

/// Valid UTF-8, as cheaply cloned [`Bytes`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text(Bytes);

/// The bytes are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not valid UTF-8")]
pub struct NotUtf8;

impl Text {
    /// Checks `bytes` once; clones share them.
    pub fn new(bytes: Bytes) -> Result<Text, NotUtf8> {
        std::str::from_utf8(&bytes).map_err(|_| NotUtf8)?;
        Ok(Text(bytes))
    }

    /// Text that its type already guarantees to be UTF-8 (a `String`, a WebSocket library's
    /// text bytes), taken without a second check.
    pub fn from_utf8_source<T: AsRef<str> + Into<Bytes>>(text: T) -> Text {
        Text(text.into())
    }

    /// The text, checked again (`unsafe` is forbidden here): for logs and tests, not for the
    /// per-message path, which passes the bytes on.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(Bytes::from(text))
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Text {
        Text(Bytes::from_static(text.as_bytes()))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_once_and_shared() {
        let text = Text::new(Bytes::from_static("héllo".as_bytes())).expect("UTF-8");
        assert_eq!(text.as_str(), "héllo");
        assert_eq!(text.len(), 6);
        assert_eq!(
            text.clone().into_bytes(),
            Bytes::from_static("héllo".as_bytes())
        );
        assert_eq!(Text::new(Bytes::from_static(b"\xff")), Err(NotUtf8));
        assert_eq!(Text::from("x".to_owned()), Text::from("x"));
    }
}
