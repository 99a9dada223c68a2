//! The TLS set-up the example programs share: certificates and keys read
//! from PEM files, and rustls configurations built from them.
//!
//! Every error names the file it is about and says what was wrong with it,
//! so that a mistyped path or a key given as a certificate is plain from
//! the message alone.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Makes ring rustls's process-wide crypto provider, unless one is already.
///
/// A TLS session handed over is rebuilt in the new process with the
/// process-wide provider, so every program that hands TLS over calls this
/// before `mitosis::init()` or `mitosis::arrive()`.
pub fn install_crypto_provider() {
    // An Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates in the PEM file `path`: at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let unreadable = |error| {
        format!(
            "could not read certificates from {}: {error}",
            path.display()
        )
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no certificate (a PEM file with a BEGIN CERTIFICATE section)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The private key in the PEM file `path` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no private key (a PEM file with a BEGIN PRIVATE KEY, RSA PRIVATE KEY or \
             EC PRIVATE KEY section)",
            path.display()
        ),
        error => format!(
            "could not read a private key from {}: {error}",
            path.display()
        ),
    })
}

/// A client configuration that verifies servers against the CA
/// certificates in `ca`, or, without it, against the system's trusted
/// roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for certificate in certificates(path)? {
                roots.add(certificate).map_err(|error| {
                    format!("{}: not a usable CA certificate: {error}", path.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                log::warn!("reading the system's trusted certificates: {error}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "found no trusted root certificates on this system (install \
                            ca-certificates, or give a CA file with --tls-ca FILE)"
                        .into(),
                );
            }
        }
    }
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A server configuration with the certificate chain in `cert` and the
/// private key in `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = certificates(cert)?;
    let key_der = private_key(key)?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|error| {
            format!(
                "the certificate in {} and the key in {} do not make a usable pair: {error}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The name to check the server's certificate against: `explicit` if
/// given, else the host part of `server` (`HOST:PORT`, `[V6]:PORT`).
pub fn server_name(explicit: Option<&str>, server: &str) -> Result<ServerName<'static>, String> {
    let name = match explicit {
        Some(name) => name,
        None => {
            let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
            host.trim_start_matches('[').trim_end_matches(']')
        }
    };
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is not a host name or IP address to verify a server by"))
}

/// The negotiated protocol and cipher suite, for the log:
/// `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
pub fn describe(version: rustls::ProtocolVersion, suite: rustls::CipherSuite) -> String {
    format!("{version:?} {suite:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_host_port() {
        let name = |server| server_name(None, server).unwrap().to_str().into_owned();
        assert_eq!(name("irc.libera.chat:6697"), "irc.libera.chat");
        assert_eq!(name("127.0.0.1:6697"), "127.0.0.1");
        assert_eq!(name("[::1]:6697"), "::1");
        let explicit = server_name(Some("localhost"), "127.0.0.1:6697").unwrap();
        assert_eq!(explicit.to_str(), "localhost");
        let error = server_name(None, "not a name:6697").unwrap_err();
        assert_eq!(
            error,
            "\"not a name\" is not a host name or IP address to verify a server by"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = certificates(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            error.starts_with("could not read certificates from /nonexistent/ca.pem: "),
            "{error}"
        );
        let error = private_key(Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(
            error.starts_with("could not read a private key from /nonexistent/key.pem: "),
            "{error}"
        );
    }
}
