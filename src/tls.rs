//! Process-wide TLS set-up.

/// Installs ring as rustls' crypto provider (once; later calls are no-ops).
/// reqwest and rumqttc are built without a provider of their own.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
