//! The node's TLS identity: reads the operator's certificate chain and
//! private key (PEM) into a rustls acceptor for the listener.

use mantle_manifest::node::TlsSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
pub use tokio_rustls::TlsAcceptor;

/// Why the node cannot serve TLS with the configured files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {}", path.display())]
    Certificate { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read the TLS private key {}", path.display())]
    Key { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the TLS certificate {} and key {} cannot be used together", cert.display(), key.display())]
    Unusable { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

/// An acceptor that answers with the configured certificate chain. It
/// offers TLS 1.2 and 1.3 with rustls's safe defaults, no client
/// certificates, and only HTTP/1.1 through ALPN: that is all the node
/// speaks.
pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |source| TlsError::Certificate { path: settings.cert_path.clone(), source };
    let chain = CertificateDer::pem_file_iter(&settings.cert_path)
        .map_err(cert_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: settings.cert_path.clone() });
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_path)
        .map_err(|source| TlsError::Key { path: settings.key_path.clone(), source })?;
    let unusable =
        |source| TlsError::Unusable { cert: settings.cert_path.clone(), key: settings.key_path.clone(), source };
    // ring rather than the default aws-lc-rs: no cmake or assembler
    // toolchain is needed to build the node.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
