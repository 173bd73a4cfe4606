//! TLS to Redis and RabbitMQ (contract §7.2): the certificates a server's certificate is verified
//! against (the system's roots, or the CA certificates of a PEM file) and the client certificate
//! shown to a server that asks for one, read from PEM files and checked once at start. It owns
//! no connection: the store and the AMQP link pass what it read to redis-rs and rustls.
//!
//! There is no way to turn verification off. No key, and nothing else a file holds, ever appears
//! in `Debug` output or an error: an error names the file and what is wrong with it.

use std::{fmt, io::Read, path::Path, sync::Arc};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};

/// A PEM file larger than this is refused (a certificate chain is a few KiB).
const MAX_FILE: u64 = 1024 * 1024;

/// Whether a URL asks for TLS (`rediss://`, `amqps://`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP (or a Unix socket).
    Plain,
    /// TLS, with the server's certificate verified.
    Tls,
}

/// Which of a connection's TLS files a [`TlsFileError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The CA certificates (`REDIS_CA_FILE`, `AMQP_CA_FILE`).
    Ca,
    /// The client certificate chain (`…_CLIENT_CERT_FILE`).
    ClientCertificate,
    /// The client certificate's private key (`…_CLIENT_KEY_FILE`).
    ClientKey,
}

/// A TLS file that cannot be used. The message names the file, never its contents.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub struct TlsFileError {
    /// Which file.
    pub file: TlsFile,
    /// What is wrong with it.
    pub problem: String,
}

fn problem(file: TlsFile, problem: String) -> TlsFileError {
    TlsFileError { file, problem }
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
struct ClientIdentity {
    certificates: Vec<u8>,
    key: Vec<u8>,
}

impl ClientIdentity {
    /// The chain and the key as rustls takes them (`read` checked that they parse).
    fn parsed(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rustls::Error> {
        let unreadable = |what: &str| rustls::Error::General(format!("unreadable client {what}"));
        let chain = CertificateDer::pem_slice_iter(&self.certificates)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unreadable("certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| unreadable("key"))?;
        Ok((chain, key))
    }
}

/// The TLS material of one connection. The default verifies against the system's roots and
/// shows no client certificate. Its `Debug` shows what is set, not what the files hold.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// PEM of the CA certificates that replace the system's roots.
    ca: Option<Vec<u8>>,
    client: Option<ClientIdentity>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roots = if self.ca.is_some() {
            "CA file"
        } else {
            "system"
        };
        f.debug_struct("TlsSettings")
            .field("roots", &roots)
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl TlsSettings {
    /// Reads and checks the CA file and the client certificate and key files: each must be
    /// readable PEM holding what its name says, and the key must belong to the certificate.
    pub fn read(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> Result<Self, TlsFileError> {
        let ca = ca.map(read_ca).transpose()?;
        let identity = client
            .map(|(certificate, key)| {
                let certificates = read_file(TlsFile::ClientCertificate, certificate)?;
                self::certificates(TlsFile::ClientCertificate, certificate, &certificates)?;
                let key_pem = read_file(TlsFile::ClientKey, key)?;
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    let message = format!(
                        "{} holds no PEM private key (PKCS #8, PKCS #1 or SEC1)",
                        key.display()
                    );
                    return Err(problem(TlsFile::ClientKey, message));
                }
                Ok(ClientIdentity {
                    certificates,
                    key: key_pem,
                })
            })
            .transpose()?;
        let settings = Self {
            ca,
            client: identity,
        };
        if let Some((certificate, key)) = client {
            // rustls checks that the key is usable and belongs to the certificate.
            settings.config(RootCertStore::empty()).map_err(|error| {
                let message = format!(
                    "{} cannot be used with the certificate of {}: {error}",
                    key.display(),
                    certificate.display()
                );
                problem(TlsFile::ClientKey, message)
            })?;
        }
        Ok(settings)
    }

    /// Whether nothing is set: the system's roots, no client certificate.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    /// The PEM of the CA certificates to verify against instead of the system's roots.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// The PEM of the client certificate chain and of its key.
    pub fn client_pem(&self) -> Option<(&[u8], &[u8])> {
        self.client
            .as_ref()
            .map(|client| (client.certificates.as_slice(), client.key.as_slice()))
    }

    /// A rustls client configuration: verifying against the CA file's certificates or else the
    /// system's roots, showing the client certificate when one is set.
    pub fn client_config(&self) -> Result<ClientConfig, rustls::Error> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                let certificates = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
                roots.add_parsable_certificates(certificates);
            }
            None => {
                let system = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(system.certs);
                if added == 0 {
                    tracing::warn!(errors = ?system.errors, "found no root certificates on this system: no TLS server will verify; set a CA file");
                }
            }
        }
        self.config(roots)
    }

    fn config(&self, roots: RootCertStore) -> Result<ClientConfig, rustls::Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some(client) => {
                let (chain, key) = client.parsed()?;
                builder.with_client_auth_cert(chain, key)
            }
        }
    }
}

/// The crypto provider of every TLS connection: ring, made the process's default (redis-rs
/// builds its configurations with the default), unless another was made the default before.
pub fn provider() -> Arc<CryptoProvider> {
    // Fails only when a default is installed already: that one is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The CA file: readable PEM of at least one certificate, each usable as a trust anchor.
fn read_ca(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let pem = read_file(TlsFile::Ca, path)?;
    let mut roots = RootCertStore::empty();
    for certificate in certificates(TlsFile::Ca, path, &pem)? {
        roots.add(certificate).map_err(|_| {
            let message = format!("{} holds a certificate that cannot be a CA", path.display());
            problem(TlsFile::Ca, message)
        })?;
    }
    Ok(pem)
}

/// The file's bytes; an error names the file and why it cannot be read.
fn read_file(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let unreadable = |why: String| problem(file, format!("cannot read {}: {why}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|opened| opened.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|error| unreadable(error.to_string()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(unreadable(
            "larger than 1 MiB, too large for a PEM file".into(),
        ));
    }
    Ok(bytes)
}

/// The certificates of a PEM file: at least one, all readable.
fn certificates(
    file: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    // The parser's own errors may quote a line of the file: they are not passed on.
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| problem(file, format!("{} is not a valid PEM file", path.display())))?;
    if certificates.is_empty() {
        return Err(problem(
            file,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certificates)
}
