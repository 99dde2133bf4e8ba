//! sha256 digests that come from outside: `@sha256:` in image references,
//! layer digests in registry manifests, remembered digests and cache file
//! names. A [`Sha256Digest`] is exactly 64 lowercase hex characters, checked
//! where the text enters; everything after that (cache file names, memory
//! caches, comparisons) takes the type, never a string, so no digest can
//! carry a path, a NUL or a second spelling of the same bytes.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A sha256 digest: 64 lowercase hex characters (the form go-digest and
/// containerd accept, and the only one kedge writes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(String);

/// Why a text is not a sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid sha256 digest {shown}: expected 64 lowercase hex characters")]
pub struct DigestError {
    /// The text, quoted with its escapes and cut to a readable length.
    shown: String,
}

impl DigestError {
    fn of(text: &str) -> DigestError {
        const MAX: usize = 80;
        let cut: String = text.chars().take(MAX).collect();
        let more = if text.chars().nth(MAX).is_some() {
            "…"
        } else {
            ""
        };
        DigestError {
            shown: format!("{cut:?}{more}"),
        }
    }
}

impl Sha256Digest {
    /// The 64 hex characters alone.
    pub fn parse(hex: &str) -> Result<Sha256Digest, DigestError> {
        let ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Sha256Digest(hex.to_string()))
        } else {
            Err(DigestError::of(hex))
        }
    }

    /// `sha256:` and the 64 hex characters (an OCI descriptor's digest).
    pub fn parse_prefixed(text: &str) -> Result<Sha256Digest, DigestError> {
        text.strip_prefix("sha256:")
            .ok_or_else(|| DigestError::of(text))
            .and_then(Sha256Digest::parse)
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest(hex::encode(Sha256::digest(bytes)))
    }

    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sha256:` and the first 12 hex digits: how messages name a module.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.0[..12])
    }
}

/// The 64 hex characters (without `sha256:`).
impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sha256Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "ab5df625bc76dbd4e163bed2dd888df828f90159bb93556525c31821b6541d46";

    #[test]
    fn accepts_only_64_lowercase_hex_characters() {
        assert_eq!(Sha256Digest::parse(D).map(|d| d.to_string()), Ok(D.into()));
        assert_eq!(
            Sha256Digest::parse_prefixed(&format!("sha256:{D}")).map(|d| d.short()),
            Ok("sha256:ab5df625bc76".into())
        );
        assert_eq!(Sha256Digest::of(b"hello").as_str().len(), 64);
        let nul = format!("{}\0", &D[..63]);
        let slash = format!("{}/", &D[..63]);
        let hostile = [
            "../../etc/x".to_string(),
            "../../../../../../tmp/evil".to_string(),
            D.to_uppercase(),
            format!("{}A", &D[..63]),
            D[..63].to_string(),
            format!("{D}0"),
            nul,
            slash,
            format!("{}\n", &D[..63]),
            String::new(),
            format!(" {}", &D[..63]),
            format!("{}é", &D[..62]),
        ];
        for bad in &hostile {
            let e = Sha256Digest::parse(bad).expect_err(bad);
            assert!(
                e.to_string().starts_with("invalid sha256 digest \"")
                    && e.to_string()
                        .ends_with(": expected 64 lowercase hex characters"),
                "{e}"
            );
            assert!(!e.to_string().contains('\0'), "{e:?}");
            assert!(Sha256Digest::parse_prefixed(&format!("sha256:{bad}")).is_err());
        }
        for bad in [
            D.to_string(),
            format!("sha512:{D}"),
            format!("SHA256:{D}"),
            format!("sha256:{}", D.to_uppercase()),
        ] {
            assert!(Sha256Digest::parse_prefixed(&bad).is_err(), "{bad}");
        }
        // A long hostile value is cut in the message.
        let e = Sha256Digest::parse(&"../".repeat(1000)).expect_err("long");
        assert!(e.to_string().len() < 200, "{e}");
    }
}
