//! The fake kubelet: the fake cAdvisor's containers and counters behind HTTPS (rustls, a
//! certificate made at start) and a bearer token, answering the kubelet's `/metrics/resource`
//! and `/metrics/cadvisor` (see [`Exposition`](super::Exposition) for their shapes).

use std::net::IpAddr;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::{serve_connection, Auth, FakeCadvisor, FakeContainer, Shared};

/// The user a [`FakeKubelet`] names in its `403 Forbidden` text unless told otherwise.
pub const KUBELET_USER: &str = "system:serviceaccount:monitoring:hatune";

/// How a [`FakeKubelet`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletOptions {
    /// The bearer token every request must carry (`Authorization: Bearer <token>`).
    pub token: String,
    /// The user the token stands for, named in the text of a [`Behaviour::Status`]`(403)`
    /// reply (`Forbidden (user=..., verb=get, resource=nodes, subresource=metrics)`).
    ///
    /// [`Behaviour::Status`]: super::Behaviour::Status
    pub user: String,
    /// Serve a certificate that expired (valid only through 2020), signed by the same CA.
    pub expired_cert: bool,
}

impl KubeletOptions {
    /// Options accepting `token`, the rest by default.
    pub fn new(token: impl Into<String>) -> KubeletOptions {
        KubeletOptions {
            token: token.into(),
            ..KubeletOptions::default()
        }
    }
}

impl Default for KubeletOptions {
    fn default() -> Self {
        KubeletOptions {
            token: "hatune-test-token".into(),
            user: KUBELET_USER.into(),
            expired_cert: false,
        }
    }
}

/// Handle to a running fake kubelet: a [`FakeCadvisor`] (which it derefs to, for
/// `set_cores_used`, `set_behaviour`, the counters, ...) serving HTTPS only, with the kubelet's
/// paths and authentication:
///
/// - every request needs `Authorization: Bearer <token>` (the scheme in any case): without it,
///   or with another token, `401 Unauthorized` with the body `Unauthorized`, before anything
///   else ([`Behaviour::Hang`](super::Behaviour::Hang) aside);
/// - `GET /metrics/resource` and `GET /metrics/cadvisor` (see
///   [`Exposition`](super::Exposition)); every other path `404`;
/// - its certificate is for `127.0.0.1`, `localhost` (and the address it was started on),
///   signed by a CA made at start: [`ca_pem`](FakeKubelet::ca_pem).
///
/// Clones share the server; it stops when the last handle (of it or of its [`FakeCadvisor`]) is
/// dropped.
#[derive(Clone)]
pub struct FakeKubelet {
    cadvisor: FakeCadvisor,
    ca_pem: Arc<str>,
}

impl FakeKubelet {
    /// Starts a fake kubelet on 127.0.0.1, on a free port, for a node with `num_cores` cores
    /// running `containers` and a `cadvisor` container (in `kube-system`).
    pub async fn start(
        num_cores: u32,
        containers: Vec<FakeContainer>,
        options: KubeletOptions,
    ) -> std::io::Result<FakeKubelet> {
        FakeKubelet::start_on(
            "127.0.0.1".parse().expect("an IP"),
            num_cores,
            containers,
            options,
        )
        .await
    }

    /// [`start`](FakeKubelet::start) on `ip` (its certificate names `ip` too).
    pub async fn start_on(
        ip: IpAddr,
        num_cores: u32,
        containers: Vec<FakeContainer>,
        options: KubeletOptions,
    ) -> std::io::Result<FakeKubelet> {
        let (ca_pem, config) =
            server_config(ip, options.expired_cert).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind((ip, 0)).await?;
        let auth = Auth {
            token: options.token,
            user: options.user,
        };
        let (cadvisor, stop_rx) = FakeCadvisor::new(&listener, num_cores, &containers, Some(auth))?;
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            cadvisor.shared.clone(),
            stop_rx,
        ));
        Ok(FakeKubelet {
            cadvisor,
            ca_pem: ca_pem.into(),
        })
    }

    /// The PEM of the CA that signed the serving certificate (write it to a file for a
    /// client's CA bundle).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.to_string()
    }

    /// The token accepted from now on; the one before gets `401`s.
    pub fn set_token(&self, token: impl Into<String>) {
        if let Some(auth) = self.cadvisor.state().auth.as_mut() {
            auth.token = token.into();
        }
    }

    /// The token accepted now.
    pub fn token(&self) -> String {
        self.cadvisor
            .state()
            .auth
            .as_ref()
            .map(|a| a.token.clone())
            .unwrap_or_default()
    }

    /// `https://127.0.0.1:PORT/metrics/resource`.
    pub fn resource_url(&self) -> String {
        format!("{}/metrics/resource", self.cadvisor.url())
    }

    /// `https://127.0.0.1:PORT/metrics/cadvisor`.
    pub fn cadvisor_url(&self) -> String {
        format!("{}/metrics/cadvisor", self.cadvisor.url())
    }

    /// TLS handshakes that failed so far (a client that did not trust the certificate, or
    /// spoke plain HTTP); such connections send no request.
    pub fn tls_failures(&self) -> u64 {
        self.cadvisor.shared.tls_failures.load(Ordering::SeqCst)
    }

    /// The fake cAdvisor behind it.
    pub fn cadvisor(&self) -> &FakeCadvisor {
        &self.cadvisor
    }
}

impl Deref for FakeKubelet {
    type Target = FakeCadvisor;

    fn deref(&self) -> &FakeCadvisor {
        &self.cadvisor
    }
}

/// The PEM of a CA certificate made now, that signed nothing any fake serves (for a client that
/// must fail to trust a [`FakeKubelet`]). Its subject is the same as the fakes' CAs', so only
/// the key tells them apart.
pub fn other_ca_pem() -> String {
    make_ca().expect("rcgen makes a CA").0
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A CA: its certificate's PEM and what signs with it.
fn make_ca() -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    make_ca_named("hatune fake kubelet CA".to_owned())
}

/// A CA of its own name, as each kubelet's self-signed certificate is (`node@<time>`): a bundle
/// of several nodes' CAs then finds each node's by name.
fn make_unique_ca() -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SERIAL.fetch_add(1, Ordering::SeqCst);
    make_ca_named(format!("hatune fake kubelet CA {}-{n}", std::process::id()))
}

/// A CA named `name`: its certificate's PEM and what signs with it (the fake kubelet's, and the
/// test etcd's).
pub(crate) fn make_ca_named(
    name: String,
) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A new CA's PEM, and a rustls server config with a certificate it signed for `127.0.0.1`,
/// `localhost` and `ip`.
fn server_config(ip: IpAddr, expired: bool) -> Result<(String, rustls::ServerConfig), BoxError> {
    let (ca_pem, issuer) = make_unique_ca()?;
    let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    if !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "fake-kubelet");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    Ok((ca_pem, config))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut conn_stop = stop.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let serve = async {
                        match acceptor.accept(stream).await {
                            Ok(tls) => serve_connection(tls, &shared).await,
                            Err(_) => {
                                shared.tls_failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    };
                    tokio::select! {
                        _ = conn_stop.wait_for(|s| *s) => {}
                        _ = serve => {}
                    }
                });
            }
        }
    }
}
