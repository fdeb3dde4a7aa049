//! TLS through rustls (feature `tls`).

use aios_core::StoreError;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connector that checks the server's certificate against the webpki roots.
pub(crate) fn connector() -> Result<MakeRustlsConnect, StoreError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Backend {
        detail: format!("cannot set up tls: {e}"),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
