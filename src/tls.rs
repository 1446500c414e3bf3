//! Transport security: TLS on every gRPC listener, mutual TLS between coordinators and workers,
//! certificates and keys from PEM files (as Kubernetes mounts Secrets), reloaded when they change.
//!
//! - [`ServerTls`] is what a server presents and whom it accepts: its certificate chain and key,
//!   and optionally a CA whose client certificates it asks for ([`ClientAuth::Optional`], the
//!   coordinator's clients) or requires ([`ClientAuth::Required`], a worker: only holders of a
//!   certificate from the cluster's CA, that is coordinators and the trainer, may call it).
//! - [`ClientTls`] is what a client trusts and presents: the CA that signed the server, an
//!   optional client certificate, and optionally the name to verify the server as (workers found
//!   through DNS are dialled by IP address, which their certificates do not name).
//!
//! Both are [`Reloading`]: the files are re-read every few seconds and, when their bytes changed,
//! the configuration is rebuilt and used for every new connection (connections already open keep
//! theirs). A change that does not load (a half-written key, a certificate that does not match
//! it) is refused with an error naming the file, and the previous configuration stays in use.
//!
//! Every problem with a file is reported naming it: missing or unreadable, no PEM block of the
//! expected kind, a certificate that has expired or is not yet valid, a key that does not match
//! its certificate. rustls with the *ring* provider does the cryptography; TLS 1.2 and 1.3, ALPN
//! `h2` (which gRPC clients in other languages insist on).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How often [`Reloading::watch`] re-reads the files. Kubernetes updates a mounted Secret within
/// about a minute; a few seconds more is nothing, and reading three small files is cheap.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// A problem with the TLS files, naming the file and saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The file cannot be read (missing, permissions).
    Unreadable {
        role: &'static str,
        path: PathBuf,
        error: String,
    },
    /// The file holds no PEM block of the expected kind, or a malformed one.
    NoPem {
        role: &'static str,
        path: PathBuf,
        expected: &'static str,
        detail: String,
    },
    /// A certificate is outside its validity period.
    Expired {
        role: &'static str,
        path: PathBuf,
        not_after: String,
    },
    NotYetValid {
        role: &'static str,
        path: PathBuf,
        not_before: String,
    },
    /// The private key is not the certificate's.
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// Anything else rustls refused, with the files involved.
    Refused { what: String, error: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Unreadable { role, path, error } => {
                write!(f, "TLS {role} {}: cannot read it: {error}", path.display())
            }
            TlsError::NoPem {
                role,
                path,
                expected,
                detail,
            } => write!(
                f,
                "TLS {role} {}: expected a PEM {expected} (-----BEGIN ...-----): {detail}",
                path.display()
            ),
            TlsError::Expired {
                role,
                path,
                not_after,
            } => write!(
                f,
                "TLS {role} {}: the certificate expired at {not_after}; renew it",
                path.display()
            ),
            TlsError::NotYetValid {
                role,
                path,
                not_before,
            } => write!(
                f,
                "TLS {role} {}: the certificate is not valid before {not_before} (check the clock)",
                path.display()
            ),
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "TLS private key {} does not belong to the certificate {}",
                key.display(),
                cert.display()
            ),
            TlsError::Refused { what, error } => write!(f, "TLS {what}: {error}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Whether a server asks its clients for certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Any client may connect (tokens, if configured, say who it is).
    None,
    /// A client may present a certificate, which must then be from this CA.
    Optional(PathBuf),
    /// Every client must present a certificate from this CA, or the handshake fails.
    Required(PathBuf),
}

/// The files a TLS server loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    pub client_auth: ClientAuth,
}

/// The files a TLS client loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA certificates (PEM) that server certificates must chain to.
    pub ca: PathBuf,
    /// A client certificate chain and key to present (mutual TLS), or none.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Verify servers as this name instead of the host dialled (a worker dialled by IP address,
    /// found through DNS, whose certificate names the Service).
    pub server_name: Option<String>,
}

/// Files that build a TLS configuration.
pub trait TlsFiles: Send + Sync + 'static {
    type Config: Send + Sync + 'static;
    /// Every file, with its role in error messages.
    fn paths(&self) -> Vec<(&'static str, &Path)>;
    /// Builds the configuration from the files' contents, in the order of [`TlsFiles::paths`].
    fn build(&self, contents: &[Vec<u8>]) -> Result<Self::Config, TlsError>;
}

/// A TLS configuration built from files and rebuilt when they change.
pub struct Reloading<F: TlsFiles> {
    files: F,
    state: RwLock<Loaded<F::Config>>,
    /// The last reload error logged, so a bad file is reported once, not every few seconds.
    last_error: Mutex<Option<TlsError>>,
    /// Counts the configurations put in use after the first.
    reloads: tokio::sync::watch::Sender<u64>,
}

/// The files' contents and the configuration built from them.
type Loaded<C> = (Vec<Vec<u8>>, Arc<C>);

pub type ServerTls = Reloading<ServerTlsFiles>;
pub type ClientTls = Reloading<ClientTlsFiles>;

impl<F: TlsFiles> Reloading<F> {
    /// Loads the files; any problem is an error naming the file.
    pub fn load(files: F) -> Result<Arc<Self>, TlsError> {
        let contents = read_all(&files)?;
        let config = Arc::new(files.build(&contents)?);
        Ok(Arc::new(Self {
            files,
            state: RwLock::new((contents, config)),
            last_error: Mutex::new(None),
            reloads: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<F::Config> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    pub fn files(&self) -> &F {
        &self.files
    }

    /// Re-reads the files. `Ok(true)`: they changed and the new configuration is in use;
    /// `Ok(false)`: unchanged; `Err`: they changed but do not load, and the previous
    /// configuration stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        if self.state.read().unwrap_or_else(|p| p.into_inner()).0 == contents {
            return Ok(false);
        }
        let config = Arc::new(self.files.build(&contents)?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = (contents, config);
        self.reloads.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// The number of reloads so far, which changes when a new configuration is put in use.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Re-reads the files every `every` in the background, for as long as `self` is held
    /// elsewhere; logs each change and each distinct error.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let outcome = this.reload();
                let mut last = this.last_error.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(true) => {
                        tracing::info!(files = ?this.files.paths(), "TLS files changed: reloaded");
                        *last = None;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        if last.as_ref() != Some(&error) {
                            tracing::error!(
                                %error,
                                "TLS files changed but do not load: still using the previous ones"
                            );
                            *last = Some(error);
                        }
                    }
                }
            }
        })
    }
}

/// The largest PEM file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

fn read_all<F: TlsFiles>(files: &F) -> Result<Vec<Vec<u8>>, TlsError> {
    files
        .paths()
        .into_iter()
        .map(|(role, path)| {
            // A regular file of at most 1 MiB: a FIFO in a certificate's place would block the
            // watcher's thread for good, and no PEM bundle is larger.
            crate::fsutil::read_small(path, MAX_PEM_BYTES).map_err(|e| TlsError::Unreadable {
                role,
                path: path.to_path_buf(),
                error: e.to_string(),
            })
        })
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file, each checked to be within its validity period now.
fn certificates(
    role: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let no_pem = |detail: String| TlsError::NoPem {
        role,
        path: path.to_path_buf(),
        expected: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(no_pem("no CERTIFICATE block in the file".into()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for cert in &certs {
        let validity = validity(cert).ok_or_else(|| {
            no_pem("a CERTIFICATE block is not an X.509 certificate this reader understands".into())
        })?;
        if now > validity.not_after {
            return Err(TlsError::Expired {
                role,
                path: path.to_path_buf(),
                not_after: format_utc(validity.not_after),
            });
        }
        if now < validity.not_before {
            return Err(TlsError::NotYetValid {
                role,
                path: path.to_path_buf(),
                not_before: format_utc(validity.not_before),
            });
        }
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::NoPem {
        role: "private key",
        path: path.to_path_buf(),
        expected: "private key",
        detail: e.to_string(),
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates("CA", path, pem)? {
        store.add(cert).map_err(|e| TlsError::Refused {
            what: format!("CA {}", path.display()),
            error: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

/// Maps rustls's refusal of a certificate and key into the error that names both files.
fn identity_error(cert: &Path, key: &Path, error: rustls::Error) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        other => TlsError::Refused {
            what: format!("certificate {} with key {}", cert.display(), key.display()),
            error: other.to_string(),
        },
    }
}

impl TlsFiles for ServerTlsFiles {
    type Config = rustls::ServerConfig;

    fn paths(&self) -> Vec<(&'static str, &Path)> {
        let mut paths = vec![
            ("certificate", self.cert.as_path()),
            ("private key", &self.key),
        ];
        match &self.client_auth {
            ClientAuth::None => {}
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => paths.push(("client CA", ca)),
        }
        paths
    }

    fn build(&self, contents: &[Vec<u8>]) -> Result<rustls::ServerConfig, TlsError> {
        let certs = certificates("certificate", &self.cert, &contents[0])?;
        let key = private_key(&self.key, &contents[1])?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Refused {
                what: "protocol versions".into(),
                error: e.to_string(),
            })?;
        let builder = match &self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
                let roots = roots(ca, &contents[2])?;
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = if matches!(self.client_auth, ClientAuth::Optional(_)) {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| TlsError::Refused {
                    what: format!("client CA {}", ca.display()),
                    error: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| identity_error(&self.cert, &self.key, e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl TlsFiles for ClientTlsFiles {
    type Config = rustls::ClientConfig;

    fn paths(&self) -> Vec<(&'static str, &Path)> {
        let mut paths = vec![("CA", self.ca.as_path())];
        if let Some((cert, key)) = &self.identity {
            paths.push(("client certificate", cert));
            paths.push(("client private key", key));
        }
        paths
    }

    fn build(&self, contents: &[Vec<u8>]) -> Result<rustls::ClientConfig, TlsError> {
        let roots = roots(&self.ca, &contents[0])?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Refused {
                what: "protocol versions".into(),
                error: e.to_string(),
            })?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert_path, key_path)) => {
                let certs = certificates("client certificate", cert_path, &contents[1])?;
                let key = private_key(key_path, &contents[2])?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| identity_error(cert_path, key_path, e))?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl<F: TlsFiles + fmt::Debug> fmt::Debug for Reloading<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}

impl ClientTls {
    /// The name to verify a server dialled at `host` as.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.files.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_string()).map_err(|e| TlsError::Refused {
            what: format!("server name {name:?}"),
            error: e.to_string(),
        })
    }

    /// A connector with the current configuration.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current())
    }
}

/// Longest a client waits for a TCP connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The endpoint for a server at `address`: `host:port`, `http://host:port` or
/// `https://host:port`. Whether the connection uses TLS is decided by the [`ClientTls`] passed
/// along, not by the scheme, so the URI is always `http://` (tonic's own TLS is not built in).
pub fn endpoint(address: &str) -> Result<tonic::transport::Endpoint, String> {
    let rest = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    tonic::transport::Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|e| format!("address {address:?} is not host:port or a URL: {e}"))
}

/// A channel to `endpoint`, connected on first use (and reconnected after failures), over TLS
/// with `tls`'s configuration at the time of each connection, or over plain TCP without it. The
/// endpoint's URI is `http://host:port` either way: the connector, not the scheme, decides.
pub fn lazy_channel(
    endpoint: tonic::transport::Endpoint,
    tls: Option<Arc<ClientTls>>,
) -> tonic::transport::Channel {
    match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(connector(tls)),
    }
}

/// Like [`lazy_channel`], but connects now, so that an unreachable server or a failed handshake
/// is reported at once.
pub async fn connect(
    endpoint: tonic::transport::Endpoint,
    tls: Option<Arc<ClientTls>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match tls {
        None => endpoint.connect().await,
        Some(tls) => endpoint.connect_with_connector(connector(tls)).await,
    }
}

/// Dials `host:port` from the URI with Nagle off and completes a TLS handshake, verifying the
/// server against the CA (as [`ClientTlsFiles::server_name`] if set, else as the host dialled).
fn connector(
    tls: Arc<ClientTls>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {host}:{port} took over {CONNECT_TIMEOUT:?}"),
                )
            })??;
            let _ = tcp.set_nodelay(true);
            let name = tls.server_name(&host).map_err(std::io::Error::other)?;
            let stream = tls.connector().connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// A certificate's validity period, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads the validity period out of a DER certificate (RFC 5280, 4.1): the fifth field of
/// `tbsCertificate` after the optional version. rustls checks peers' validity itself; this is for
/// our own files, so that an expired certificate is refused when it is loaded, naming the file,
/// rather than by every peer at every handshake.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] EXPLICIT version
    }
    for expected in [0x02, 0x30, 0x30] {
        // serialNumber, signature, issuer
        let (tag, _, after) = der_element(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag_before, before, rest) = der_element(validity)?;
    let (tag_after, after, _) = der_element(rest)?;
    Some(Validity {
        not_before: der_time(tag_before, before)?,
        not_after: der_time(tag_after, after)?,
    })
}

/// One DER element: its tag, its contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as Unix seconds.
fn der_time(tag: u8, bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The current time as RFC 3339 (`2026-11-27T23:50:00Z`).
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(now).replacen(' ', "T", 1).replace(" UTC", "Z")
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn format_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            der_time(0x17, b"491231235959Z"),
            Some(days_from_civil(2049, 12, 31) * 86_400 + 86_399)
        );
        assert_eq!(
            der_time(0x17, b"500101000000Z"),
            Some(days_from_civil(1950, 1, 1) * 86_400)
        );
        assert_eq!(
            der_time(0x18, b"20261127120000Z"),
            Some(days_from_civil(2026, 11, 27) * 86_400 + 12 * 3600)
        );
        assert_eq!(der_time(0x18, b"2026112712000Z"), None);
        assert_eq!(der_time(0x17, b"261327120000Z"), None);
    }

    #[test]
    fn truncated_der_is_refused_not_read_past() {
        assert_eq!(der_element(&[0x30]), None);
        assert_eq!(der_element(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(der_element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(validity(&[0x30, 0x00]), None);
        assert_eq!(validity(b"not a certificate"), None);
    }
}
