//! TLS at the front door (`[server] tls_listen`, `[tls]`): rustls with the ring provider,
//! TLS 1.2 and 1.3 with rustls' safe defaults (no renegotiation, no compression, AEAD
//! suites only), session resumption (a session cache and rotating ticket keys), ALPN `h2`
//! then `http/1.1`.
//!
//! # Layout
//! - [`load`]: the certificates of `[tls]` and `[[tls.sni]]` read and checked (each error
//!   names the key and the file, and what is wrong with it): a pure function of the files.
//! - [`CertSet`]: which certificate answers a server name (exact, then `*.` one label,
//!   then the default).
//! - [`Tls`]: the rustls server config, whose resolver holds the current [`CertSet`];
//!   [`Tls::reload`] swaps in a new one (SIGHUP) without touching the connections, and a
//!   set that does not load leaves the old one.
//! - [`serve_connection`]: the handshake (bounded by `client_header_timeout`), then
//!   HTTP/2 ([`crate::http2`]) or HTTP/1.1 ([`crate::http`]) by the ALPN outcome.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::debug;
use weir_config::TlsConfig;

use crate::environ::ConnInfo;
use crate::front::Front;

/// TLS sessions remembered for resumption by session id (TLS 1.2 and stateful TLS 1.3).
const SESSION_CACHE: usize = 4096;

/// A certificate or key that cannot be used; it names the key, the file and the reason.
#[derive(Debug, Error)]
#[error("invalid config: {key}: {path}: {what}")]
pub struct TlsError {
    key: String,
    path: PathBuf,
    what: String,
}

impl TlsError {
    fn new(key: &str, path: &Path, what: impl Into<String>) -> TlsError {
        TlsError {
            key: key.to_owned(),
            path: path.to_owned(),
            what: what.into(),
        }
    }
}

/// The certificates: the default one and those chosen by server name.
#[derive(Debug)]
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.org` is stored as `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// The certificate for a client that asked for `name` (None: sent no SNI).
    pub fn choose(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return c;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return c;
            }
        }
        &self.default
    }
}

/// The ring provider: it builds with a C compiler alone (aws-lc-rs needs cmake and builds
/// for much longer). rustls 0.23.48 marks it deprecated because ring has no post-quantum
/// key exchange (X25519MLKEM768); classical X25519/P-256/P-384 are used.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks every certificate and key of `[tls]`.
pub fn load(cfg: &TlsConfig) -> Result<CertSet, TlsError> {
    let provider = provider();
    let (Some(cert), Some(key)) = (&cfg.certificate, &cfg.key) else {
        // Config::validate requires both when a TLS listener is set.
        return Err(TlsError::new(
            "tls.certificate",
            Path::new(""),
            "a TLS listener needs [tls] certificate and key",
        ));
    };
    let default = Arc::new(load_pair(
        ("tls.certificate", cert),
        ("tls.key", key),
        &provider,
    )?);
    let mut set = CertSet {
        default,
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    for (i, s) in cfg.sni.iter().enumerate() {
        let ck = Arc::new(load_pair(
            (&format!("tls.sni[{i}].certificate"), &s.certificate),
            (&format!("tls.sni[{i}].key"), &s.key),
            &provider,
        )?);
        for n in &s.names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(parent) => set.wildcard.insert(parent.to_owned(), ck.clone()),
                None => set.exact.insert(n, ck.clone()),
            };
        }
    }
    Ok(set)
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::NotFound => " (no such file)",
            io::ErrorKind::PermissionDenied => " (weir's user cannot read it)",
            _ => "",
        };
        TlsError::new(key, path, format!("cannot read it: {e}{hint}"))
    })
}

/// One certificate chain and its key, checked to belong together.
fn load_pair(
    (cert_key, cert_path): (&str, &Path),
    (key_key, key_path): (&str, &Path),
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem = read(cert_key, cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsError::new(
                cert_key,
                cert_path,
                format!("not a PEM certificate file: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(TlsError::new(
            cert_key,
            cert_path,
            "no certificate in it: expected PEM blocks `-----BEGIN CERTIFICATE-----`, the server's certificate first, then its chain",
        ));
    }
    let pem = read(key_key, key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError::new(
            key_key,
            key_path,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no private key in it: expected a PEM block `-----BEGIN PRIVATE KEY-----` (PKCS#8), `RSA PRIVATE KEY` or `EC PRIVATE KEY`".to_owned(),
                e => format!("not a PEM private key: {e}"),
            },
        )
    })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::new(key_key, key_path, format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::new(
                key_key,
                key_path,
                format!(
                    "this key does not belong to the certificate in {} (its public key differs): give the key the certificate was issued for",
                    cert_path.display()
                ),
            ))
        }
        Err(e) => Err(TlsError::new(
            cert_key,
            cert_path,
            format!("the first certificate cannot be read: {e}"),
        )),
    }
}

/// rustls asks this for a certificate on each handshake.
#[derive(Debug)]
struct Resolver {
    set: RwLock<Arc<CertSet>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self
            .set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Some(set.choose(hello.server_name()).clone())
    }
}

/// The TLS listeners' configuration, shared by every TLS connection.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    source: TlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("source", &self.source).finish()
    }
}

impl Tls {
    /// Loads the certificates and builds the server config.
    pub fn new(cfg: &TlsConfig) -> Result<Tls, TlsError> {
        let set = load(cfg)?;
        let resolver = Arc::new(Resolver {
            set: RwLock::new(Arc::new(set)),
        });
        let mut sc = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        sc.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        // Stateless resumption (tickets) as well; keys rotate every 6 hours. A failure
        // here (no randomness) leaves stateful resumption only.
        if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
            sc.ticketer = t;
        }
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(sc)),
            resolver,
            source: cfg.clone(),
        })
    }

    /// Reads the certificate files again (SIGHUP); new handshakes use them, connections
    /// already open keep theirs. On an error the certificates in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let set = load(&self.source)?;
        *self
            .resolver
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
        Ok(())
    }
}

/// Serves one TLS connection: the handshake (within `client_header_timeout`), then
/// HTTP/2 when the client chose `h2` by ALPN, else HTTP/1.1.
// Not an `async fn`: its arguments would be copied into the future's locals, and both
// copies kept for the connection's life.
#[allow(clippy::manual_async_fn)]
pub fn serve_connection<S>(
    io: S,
    conn: ConnInfo,
    front: Arc<Front>,
    drain: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The task is as large as the larger of the handshake and the serving, held for as
    // long as the connection lives: the stream is never borrowed here (a borrowed local
    // keeps its place across every later wait), and HTTP/2's larger future is boxed.
    async move {
        let Some(tls) = &front.tls else { return };
        let stream = match tokio::time::timeout(front.header_timeout, tls.acceptor.accept(io)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(peer = ?conn.peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!(peer = ?conn.peer, "TLS handshake took longer than client_header_timeout");
                return;
            }
        };
        serving(stream, conn, front, drain).await;
    }
}

/// After the handshake: HTTP/2 or HTTP/1.1, by the ALPN outcome.
fn serving<S>(
    stream: tokio_rustls::server::TlsStream<S>,
    mut conn: ConnInfo,
    front: Arc<Front>,
    drain: watch::Receiver<bool>,
) -> Serving<impl Future<Output = ()> + Send>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    conn.tls = true;
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        return Serving::Http2 {
            fut: Box::pin(crate::http2::serve_connection(stream, conn, front, drain)),
        };
    }
    // HTTP/1.1: the gate reads each request head before hyper's connection (and its
    // read buffer) is made, as NGINX allocates its header buffer only then, so a
    // connection opened ahead of time (a browser's preconnect) holds the TLS session
    // alone; the wait is bounded by client_header_timeout.
    Serving::Http1 {
        fut: crate::http::serve_connection(stream, conn, front, drain),
    }
}

pin_project_lite::pin_project! {
    /// A TLS connection's protocol, served.
    #[project = ServingProj]
    enum Serving<H1> {
        Http1 { #[pin] fut: H1 },
        Http2 { fut: Pin<Box<dyn Future<Output = ()> + Send>> },
    }
}

impl<H1: Future<Output = ()>> Future for Serving<H1> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            ServingProj::Http1 { fut } => fut.poll(cx),
            ServingProj::Http2 { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u8) -> Arc<CertifiedKey> {
        #[derive(Debug)]
        struct NoKey;
        impl rustls::sign::SigningKey for NoKey {
            fn choose_scheme(
                &self,
                _: &[rustls::SignatureScheme],
            ) -> Option<Box<dyn rustls::sign::Signer>> {
                None
            }
            fn algorithm(&self) -> rustls::SignatureAlgorithm {
                rustls::SignatureAlgorithm::ECDSA
            }
        }
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![tag])],
            Arc::new(NoKey),
        ))
    }

    #[test]
    fn server_names_choose_exact_then_one_label_wildcard_then_default() {
        let set = CertSet {
            default: key(0),
            exact: [("api.example.com".to_owned(), key(1))].into(),
            wildcard: [("example.org".to_owned(), key(2))].into(),
        };
        let tag = |n: Option<&str>| set.choose(n).cert[0].as_ref()[0];
        assert_eq!(tag(None), 0);
        assert_eq!(tag(Some("API.example.com.")), 1);
        assert_eq!(tag(Some("a.example.org")), 2);
        assert_eq!(tag(Some("example.org")), 0);
        assert_eq!(tag(Some("a.b.example.org")), 0);
        assert_eq!(tag(Some("other.test")), 0);
    }

    #[test]
    fn missing_files_name_the_key_and_the_file() {
        let cfg = TlsConfig {
            certificate: Some("/nonexistent/cert.pem".into()),
            key: Some("/nonexistent/key.pem".into()),
            sni: Vec::new(),
        };
        let e = load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("tls.certificate: /nonexistent/cert.pem: cannot read it"),
            "{e}"
        );
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn a_file_without_pem_blocks_says_so() {
        let dir = std::env::temp_dir().join(format!("weir-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "hello\n").unwrap();
        let cfg = TlsConfig {
            certificate: Some(cert.clone()),
            key: Some(cert.clone()),
            sni: Vec::new(),
        };
        let e = load(&cfg).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("tls.certificate"), "{e}");
        assert!(e.contains("no certificate in it"), "{e}");
    }
}
