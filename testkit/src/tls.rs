//! TLS for the tests: [`TestCertificates`], made at test time with rcgen and written as PEM files
//! to a directory of their own (removed when dropped), and [`TlsProxy`], which terminates TLS
//! in front of a plain server (the machine's RabbitMQ) and can demand client certificates.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A certificate (PEM, with the chain up to but without its CA) and its private key (PEM).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate file.
    pub certificate: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// Certificates for one test, in a temporary directory removed when this is dropped:
///
/// - [`TestCertificates::ca`] signs the server certificates and the client certificate;
/// - [`TestCertificates::other_ca`] signed nothing here (a wrong CA to configure);
/// - [`TestCertificates::server`] for `localhost` and `127.0.0.1`, good for ten years (it may
///   also serve as a client certificate, as Redis Cluster nodes use theirs);
/// - [`TestCertificates::expired_server`], the same names, expired yesterday;
/// - [`TestCertificates::localhost_server`], for the name `localhost` alone (so not valid for
///   `127.0.0.1`);
/// - [`TestCertificates::client`], a client certificate.
pub struct TestCertificates {
    dir: PathBuf,
}

impl TestCertificates {
    /// Makes the certificates and keys and writes them.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("certs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let certificates = Self { dir };
        let ca = certificates.make_ca("ca", "session-manager test CA");
        certificates.make_ca("other-ca", "a CA that signed nothing here");
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let valid = (now - day, now + 3650 * day);
        let both = ["localhost", "127.0.0.1"];
        certificates.make_signed(&ca, "server", &both, valid, Role::Server);
        certificates.make_signed(
            &ca,
            "expired",
            &both,
            (now - 2 * day, now - day),
            Role::Server,
        );
        certificates.make_signed(&ca, "localhost", &["localhost"], valid, Role::Server);
        certificates.make_signed(&ca, "client", &["session-manager"], valid, Role::Client);
        certificates
    }

    /// The CA file of the CA that signed every certificate here.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA file of a CA that signed none of them.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Identity {
        self.identity("server")
    }

    /// A server certificate for `localhost` and `127.0.0.1` that expired yesterday.
    pub fn expired_server(&self) -> Identity {
        self.identity("expired")
    }

    /// A server certificate for the name `localhost` only.
    pub fn localhost_server(&self) -> Identity {
        self.identity("localhost")
    }

    /// A client certificate signed by [`TestCertificates::ca`].
    pub fn client(&self) -> Identity {
        self.identity("client")
    }

    fn identity(&self, name: &str) -> Identity {
        Identity {
            certificate: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    fn make_ca(&self, name: &str, common_name: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let certificate = params.self_signed(&key).unwrap();
        std::fs::write(self.dir.join(format!("{name}.crt")), certificate.pem()).unwrap();
        Issuer::new(params, key)
    }

    fn make_signed(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        name: &str,
        subject_alt_names: &[&str],
        (not_before, not_after): (time::OffsetDateTime, time::OffsetDateTime),
        role: Role,
    ) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = subject_alt_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, subject_alt_names[0]);
        params.not_before = not_before;
        params.not_after = not_after;
        params.extended_key_usages = match role {
            // Redis Cluster nodes show their server certificate to each other as clients.
            Role::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let certificate = params.signed_by(&key, issuer).unwrap();
        let identity = self.identity(name);
        std::fs::write(identity.certificate, certificate.pem()).unwrap();
        std::fs::write(identity.key, key.serialize_pem()).unwrap();
    }
}

/// What a certificate is for.
enum Role {
    Server,
    Client,
}

impl Default for TestCertificates {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS-terminating proxy: takes TLS connections on a free port with a server certificate,
/// optionally demands a client certificate signed by a CA, and passes the plain bytes on to
/// the upstream server. Dropping it closes every connection through it.
pub struct TlsProxy {
    /// Where clients connect.
    pub port: u16,
    handshakes: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Listens on a free port of 127.0.0.1 with `server`'s certificate, demanding a client
    /// certificate signed by `client_ca` when given, and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, server: &Identity, client_ca: Option<&Path>) -> Self {
        Self::start_on(0, upstream, server, client_ca).await
    }

    /// As [`TlsProxy::start`], on `port` (e.g. again, after dropping a proxy there: it waits up
    /// to 5 s for the port to be free).
    pub async fn start_on(
        port: u16,
        upstream: SocketAddr,
        server: &Identity,
        client_ca: Option<&Path>,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = match client_ca {
            None => WebPkiClientVerifier::no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(certificate.unwrap()).unwrap();
                }
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .unwrap()
            }
        };
        let chain = CertificateDer::pem_file_iter(&server.certificate)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => break listener,
                Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let handshakes = handshakes.clone();
            async move {
                // Dropped with this task: every connection through the proxy ends with it.
                let mut pipes = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let handshakes = handshakes.clone();
                    pipes.spawn(async move {
                        let Ok(mut client) = acceptor.accept(client).await else {
                            return; // the handshake failed: the client learns why from its alert
                        };
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    while pipes.try_join_next().is_some() {}
                }
            }
        });
        Self {
            port,
            handshakes,
            accept,
        }
    }

    /// How many TLS handshakes have succeeded so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
