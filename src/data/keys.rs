//! Keys of the data path: the device's Ed25519 signing key (ring, made on
//! first start, mode 0600) and the sink's HPKE X25519 key pair.
//!
//! Files: the device key is PKCS#8 (`{data_dir}/data/device-key.pk8`, its
//! public key in hex beside it as `device-key.pub`); a sink key file holds a
//! 32-byte seed in hex from which RFC 9180's DeriveKeyPair makes the X25519
//! pair; a sink public key is 32 bytes in hex (the agent's
//! `data.sink_public_key`).

use std::io::Write as _;
use std::path::Path;

use ring::signature::{self, KeyPair as _};

pub use crate::seal::KeyError;

/// The device's signing key.
pub struct DeviceKey {
    pair: signature::Ed25519KeyPair,
}

impl DeviceKey {
    pub fn generate() -> Result<DeviceKey, KeyError> {
        Ok(Self::generate_pkcs8()?.0)
    }

    fn generate_pkcs8() -> Result<(DeviceKey, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let bytes = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8(&bytes, "a new key")?, bytes))
    }

    fn from_pkcs8(bytes: &[u8], what: &str) -> Result<DeviceKey, KeyError> {
        let pair = signature::Ed25519KeyPair::from_pkcs8(bytes).map_err(|e| KeyError::Invalid {
            what: what.to_string(),
            message: e.to_string(),
        })?;
        Ok(DeviceKey { pair })
    }

    /// Reads `path`, or makes a new key there (mode 0600, written to a
    /// temporary file and renamed, so a crash never leaves half a key) with
    /// its public key in hex at `path` + `.pub`.
    pub fn load_or_create(path: &Path) -> Result<DeviceKey, KeyError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => return Self::from_pkcs8(&bytes, &shown),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(KeyError::Read {
                    path: shown,
                    message: e.to_string(),
                });
            }
        }
        let (key, pkcs8) = Self::generate_pkcs8()?;
        let write = |target: &Path, bytes: &[u8], mode: u32| -> Result<(), KeyError> {
            let err = |e: std::io::Error| KeyError::Write {
                path: target.display().to_string(),
                message: e.to_string(),
            };
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let tmp = target.with_extension("tmp");
            let mut file = {
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&tmp)
                    .map_err(err)?
            };
            file.write_all(bytes).map_err(err)?;
            file.sync_all().map_err(err)?;
            std::fs::rename(&tmp, target).map_err(err)
        };
        let public = format!("{}\n", hex::encode(key.public_key()));
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        write(Path::new(&pub_path), public.as_bytes(), 0o644)?;
        write(path, &pkcs8, 0o600)?;
        Ok(key)
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
}

/// Whether `signature` is the Ed25519 signature of `message` by `public`.
pub fn verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(message, signature)
        .is_ok()
}

pub use crate::seal::parse_hex32;

/// A sink's public key, as devices are configured with it (an X25519
/// public key, `seal`).
pub type SinkPublicKey = crate::seal::PublicKey;

/// A sink's private key (`seal::KeyPair`).
pub type SinkKey = crate::seal::KeyPair;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_key_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/device-key.pk8");
        let first = DeviceKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = DeviceKey::load_or_create(&path).expect("load");
        assert_eq!(first.public_key(), again.public_key());
        let published = std::fs::read_to_string(dir.path().join("data/device-key.pk8.pub"))
            .expect("public key file");
        assert_eq!(published.trim(), hex::encode(first.public_key()));
        let sig = first.sign(b"x");
        assert!(verify(again.public_key(), b"x", &sig));
        assert!(!verify(again.public_key(), b"y", &sig));
    }
}
