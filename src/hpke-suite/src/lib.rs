//! kedge's HPKE suite (RFC 9180): DHKEM(X25519, HKDF-SHA256), HKDF-SHA256
//! and ChaCha20-Poly1305, base mode, single shot. Every generic of the
//! `hpke` crate is named here, so its code is generated in this crate, at
//! this crate's opt-level (Cargo.toml says why).

use hpke::{Deserializable as _, Serializable as _};

pub use hpke::HpkeError;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// A recipient's public key.
pub type PublicKey = <Kem as hpke::Kem>::PublicKey;
/// A recipient's private key.
pub type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
/// The sender's ephemeral public key, as `seal` returns it.
pub type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// The public key of 32 bytes, or why not.
pub fn public_key(bytes: &[u8]) -> Result<PublicKey, HpkeError> {
    PublicKey::from_bytes(bytes)
}

/// The encapsulated key of 32 bytes, or why not.
pub fn encapped_key(bytes: &[u8]) -> Result<EncappedKey, HpkeError> {
    EncappedKey::from_bytes(bytes)
}

/// A key's 32 bytes.
pub fn public_key_bytes(key: &PublicKey) -> [u8; 32] {
    key.to_bytes().into()
}

/// The key pair derived from `ikm` (RFC 9180 `DeriveKeyPair`).
pub fn derive_key_pair(ikm: &[u8]) -> (PrivateKey, PublicKey) {
    <Kem as hpke::Kem>::derive_keypair(ikm)
}

/// Seals `plaintext` to `to`: the encapsulated key and the ciphertext.
pub fn seal(
    to: &PublicKey,
    info: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<([u8; 32], Vec<u8>), HpkeError> {
    let (encapped, ciphertext) =
        hpke::single_shot_seal::<Aead, Kdf, Kem>(&hpke::OpModeS::Base, to, info, plaintext, aad)?;
    Ok((encapped.to_bytes().into(), ciphertext))
}

/// Opens what `seal` sealed to the key pair of `key`.
pub fn open(
    key: &PrivateKey,
    encapped: &EncappedKey,
    info: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &hpke::OpModeR::Base,
        key,
        encapped,
        info,
        ciphertext,
        aad,
    )
}
