//! Request path normalization, done once before routing and policy so both see the same path,
//! and that path is the one forwarded upstream (as Envoy's `normalize_path` does).
//!
//! Modes follow Istio's mesh-wide `pathNormalization`:
//!
//! - [`PathNormalization::None`]: the path is used as received.
//! - [`PathNormalization::Base`]: RFC 3986: percent-encoded unreserved characters are decoded
//!   (`%61` -> `a`, `%2E` -> `.`), other escapes get upper-case hex, a raw `\` becomes `/` (as
//!   Envoy's URL library does), and dot segments are removed (`/a/./b/../c` -> `/a/c`).
//! - [`PathNormalization::MergeSlashes`]: `Base`, then runs of `/` become one (`//a` -> `/a`).
//! - [`PathNormalization::DecodeAndMergeSlashes`]: also decodes `%2F` and `%5C` into `/` first.
//!
//! Where the result would still be ambiguous the request is refused instead (HTTP 400), in
//! every mode but `None`: an escaped slash or backslash that the mode does not decode (a backend
//! that decodes it would see a different path than policy did), a malformed escape, NUL, or a
//! path that is not origin-form. Envoy keeps escaped slashes unchanged by default; refusing them
//! is Weft's deliberate, safer difference (docs/waypoint-authorization.md).

pub mod reference;

use std::borrow::Cow;

/// How request paths are normalized (Istio `meshConfig.pathNormalization.normalization`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PathNormalization {
    /// No normalization (only NUL and fragments are refused).
    None,
    /// RFC 3986 normalization.
    Base,
    /// [`Base`](Self::Base) plus merging adjacent slashes. Weft's default: most backends
    /// (nginx, Go's `ServeMux`, Tomcat) treat `//admin` as `/admin`, so without merging a DENY on
    /// `/admin` would not hold for them.
    #[default]
    MergeSlashes,
    /// [`MergeSlashes`](Self::MergeSlashes) after decoding `%2F`/`%5C` as `/`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// Parses Istio's names (`NONE`, `BASE`, `MERGE_SLASHES`, `DECODE_AND_MERGE_SLASHES`;
    /// `DEFAULT` means Weft's default), case-insensitively, `-` and `_` alike.
    pub fn parse(text: &str) -> Option<Self> {
        let name = text.trim().to_ascii_uppercase().replace('-', "_");
        Some(match name.as_str() {
            "NONE" => Self::None,
            "BASE" => Self::Base,
            "MERGE_SLASHES" => Self::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Self::DecodeAndMergeSlashes,
            "DEFAULT" | "" => Self::default(),
            _ => return None,
        })
    }

    /// Istio's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Base => "BASE",
            Self::MergeSlashes => "MERGE_SLASHES",
            Self::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }

    fn merges_slashes(self) -> bool {
        matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes)
    }
}

impl std::fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a path was refused (the request gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path is not origin-form (must start with '/')")]
    NotOriginForm,
    /// A NUL byte, raw or escaped.
    #[error("path contains NUL")]
    Nul,
    /// A `#` fragment (never sent by conforming clients).
    #[error("path contains a fragment")]
    Fragment,
    /// `%` not followed by two hex digits.
    #[error("path has a malformed percent-escape")]
    BadEscape,
    /// `%2F` or `%5C` in a mode that does not decode them.
    #[error("path contains an escaped slash or backslash")]
    EscapedSlash,
}

/// Normalizes `path` (no query string) per `mode`; borrows when nothing changes.
pub fn normalize(path: &str, mode: PathNormalization) -> Result<Cow<'_, str>, PathError> {
    if path.contains('#') {
        return Err(PathError::Fragment);
    }
    if mode == PathNormalization::None {
        let escaped_nul = path.as_bytes().windows(3).any(|w| w == b"%00");
        return if path.contains('\0') || escaped_nul {
            Err(PathError::Nul)
        } else {
            Ok(Cow::Borrowed(path))
        };
    }
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode(path, mode)?;
    let normalized = remove_dot_segments(&decoded, mode.merges_slashes());
    Ok(if normalized == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normalized)
    })
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes what the mode decodes, upper-cases the rest of the escapes, turns `\` into `/`.
fn decode(path: &str, mode: PathNormalization) -> Result<String, PathError> {
    const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => return Err(PathError::Nul),
            b'\\' => out.push(b'/'),
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = high << 4 | low;
                match value {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' if mode == PathNormalization::DecodeAndMergeSlashes => {
                        out.push(b'/')
                    }
                    b'/' | b'\\' => return Err(PathError::EscapedSlash),
                    v if is_unreserved(v) => out.push(v),
                    v => out.extend_from_slice(&[
                        b'%',
                        UPPER_HEX[usize::from(v >> 4)],
                        UPPER_HEX[usize::from(v & 0xf)],
                    ]),
                }
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    // Only ASCII was removed or added, and multi-byte sequences were copied whole.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

/// RFC 3986 section 5.2.4 on an absolute path, optionally dropping empty segments.
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.into_iter().enumerate() {
        let is_last = index == last;
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            "" if merge_slashes && !is_last => continue,
            other => {
                kept.push(other);
                continue;
            }
        }
        // A dot segment at the end leaves a trailing slash (`/a/b/..` -> `/a/`).
        if is_last {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&kept.join("/"));
    out
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
