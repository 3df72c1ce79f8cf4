//! TLS to the API server: only the service account's `ca.crt` is trusted,
//! and a server certificate that is byte for byte one of the certificates
//! in `ca.crt` is accepted as Go's `crypto/x509` accepts it (a certificate
//! in the root pool is a chain by itself), still checked for its validity
//! period and for the API server's name or address. Everything else goes
//! through rustls' own chain verification ([`WebPkiServerVerifier`]).
//!
//! Built on rustls' extension point for this, a
//! [`ServerCertVerifier`] wrapping [`WebPkiServerVerifier`], and on ureq's
//! connector chain, since ureq 3 takes no rustls `ClientConfig`:
//! [`ApiServerTls`] wraps the TCP transport ureq opens in a rustls client
//! with that verifier.
//!
//! A refused certificate is reported with what the server presented and
//! what `ca.crt` holds (subjects, validity, SHA-256 fingerprints) and the
//! fix, as a [`Refused`] inside rustls'
//! `Error::InvalidCertificate(CertificateError::Other(..))`; the connector
//! hands that rustls error to ureq as `ureq::Error::Rustls`, so the client
//! can tell it from a network failure (see [`refusal`]).

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, OtherError,
    RootCertStore, SignatureScheme, StreamOwned,
};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};
use x509_cert::der::Decode;

/// The certificates of `ca.crt`, the only ones trusted.
#[derive(Debug)]
pub struct CaBundle {
    path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// The DER certificates read from `path` (for messages).
    pub fn new(path: &Path, certs: Vec<CertificateDer<'static>>) -> CaBundle {
        CaBundle {
            path: path.to_path_buf(),
            certs,
        }
    }

    fn holds(&self, cert: &CertificateDer<'_>) -> bool {
        self.certs.iter().any(|c| c.as_ref() == cert.as_ref())
    }
}

/// The verifier of the API server's certificate: rustls' chain
/// verification against `ca.crt`, and Go's rule for a certificate that is
/// itself in `ca.crt`.
#[derive(Debug)]
pub struct ApiServerVerifier {
    chain: Arc<WebPkiServerVerifier>,
    ca: CaBundle,
}

impl ApiServerVerifier {
    /// A verifier trusting only `ca`.
    pub fn new(ca: CaBundle, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(ca.certs.iter().cloned());
        if added == 0 {
            return Err(format!(
                "none of the {} certificates in {} can be used as a CA: it must hold the API server's CA in PEM",
                ca.certs.len(),
                ca.path.display()
            ));
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("setting up TLS with {}: {e}", ca.path.display()))?;
        Ok(ApiServerVerifier { chain, ca })
    }

    /// The certificate is one of `ca.crt`'s: trusted as it stands, as Go's
    /// verifier trusts a root presented as the leaf, once its name and
    /// validity period are right (parsed and matched by webpki, through
    /// rustls).
    fn check_exact(
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        let parsed = ParsedCertificate::try_from(end_entity).map_err(certificate_error)?;
        rustls::client::verify_server_name(&parsed, server_name).map_err(certificate_error)?;
        let (not_before, not_after) =
            validity(end_entity.as_ref()).ok_or(CertificateError::BadEncoding)?;
        let at = Duration::from_secs(now.as_secs());
        if at < not_before {
            return Err(CertificateError::NotValidYetContext {
                time: now,
                not_before: UnixTime::since_unix_epoch(not_before),
            });
        }
        if at > not_after {
            return Err(CertificateError::ExpiredContext {
                time: now,
                not_after: UnixTime::since_unix_epoch(not_after),
            });
        }
        Ok(())
    }

    fn refuse(
        &self,
        why: CertificateError,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> rustls::Error {
        let refused = Refused::new(&self.ca, why, end_entity, intermediates, server_name);
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refused))))
    }
}

impl ServerCertVerifier for ApiServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let why = match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(rustls::Error::InvalidCertificate(why)) => why,
            Err(other) => return Err(other),
        };
        let why = if self.ca.holds(end_entity) {
            match Self::check_exact(end_entity, server_name, now) {
                Ok(()) => return Ok(ServerCertVerified::assertion()),
                Err(why) => why,
            }
        } else {
            why
        };
        Err(self.refuse(why, end_entity, intermediates, server_name))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.chain.root_hint_subjects()
    }
}

/// A rustls error about a certificate, as a certificate error.
fn certificate_error(e: rustls::Error) -> CertificateError {
    match e {
        rustls::Error::InvalidCertificate(why) => why,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    }
}

/// The validity period of a certificate, as durations since the Unix epoch.
fn validity(der: &[u8]) -> Option<(Duration, Duration)> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let v = cert.tbs_certificate().validity();
    Some((
        v.not_before.to_unix_duration(),
        v.not_after.to_unix_duration(),
    ))
}

/// One certificate for people: subject, issuer, validity, SHA-256
/// fingerprint.
pub fn describe(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let fingerprint = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    match x509_cert::Certificate::from_der(der) {
        Ok(cert) => {
            let tbs = cert.tbs_certificate();
            let (subject, issuer) = (tbs.subject().to_string(), tbs.issuer().to_string());
            let issued = if subject == issuer {
                "self-signed".to_string()
            } else {
                format!("issuer \"{issuer}\"")
            };
            format!(
                "[subject \"{subject}\", {issued}, valid {} to {}, SHA-256 {fingerprint}]",
                tbs.validity().not_before,
                tbs.validity().not_after
            )
        }
        Err(_) => format!("[not a certificate that can be read, SHA-256 {fingerprint}]"),
    }
}

/// Why the API server's certificate was refused, with what it presented,
/// what `ca.crt` holds and the fix: the whole message.
#[derive(Debug)]
pub struct Refused {
    /// The reason rustls or the exact-match check gave.
    pub why: CertificateError,
    message: String,
}

impl Refused {
    fn new(
        ca: &CaBundle,
        why: CertificateError,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> Refused {
        let host = server_name.to_str();
        let mut presented = describe(end_entity.as_ref());
        if !intermediates.is_empty() {
            let more: Vec<String> = intermediates.iter().map(|c| describe(c.as_ref())).collect();
            presented.push_str(&format!(", chained to {}", more.join(", ")));
        }
        let held: Vec<String> = ca.certs.iter().map(|c| describe(c.as_ref())).collect();
        let count = match held.len() {
            1 => "1 certificate".to_string(),
            n => format!("{n} certificates"),
        };
        let reason = match &why {
            CertificateError::UnknownIssuer => {
                "it is neither one of the certificates in ca.crt nor issued by one of them"
                    .to_string()
            }
            CertificateError::BadSignature => {
                "it names a certificate in ca.crt as its issuer, but was not signed with that certificate's key (was the cluster's CA replaced by one of the same name?)".to_string()
            }
            CertificateError::Other(OtherError(e)) if !ca.holds(end_entity) => format!(
                "it is not one of the certificates in ca.crt, and as a chain to them it is refused ({e})"
            ),
            CertificateError::Other(OtherError(e)) => e.to_string(),
            other => other.to_string(),
        };
        let fix = match &why {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "reach the API server by a name or address its certificate holds (KUBERNETES_SERVICE_HOST), or give the API server a certificate valid for {host}"
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "renew the API server's certificate, or correct this machine's clock".to_string()
            }
            _ => format!(
                "{} must hold the CA that issued the API server's certificate, or that certificate itself: mount the service account token the cluster provides (its ca.crt is the kube-root-ca.crt ConfigMap), and restart the pod after the cluster's CA changes (ca.crt is read once, at start)",
                ca.path.display()
            ),
        };
        let message = format!(
            "the API server's certificate is not trusted: {reason}. The server at {host} presented {presented}; {} holds {count}: {}. Fix: {fix}",
            ca.path.display(),
            held.join(", ")
        );
        Refused { why, message }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// The whole message of a refused certificate, from rustls' error.
pub fn refusal(why: &CertificateError) -> String {
    if let CertificateError::Other(OtherError(e)) = why
        && let Some(refused) = e.downcast_ref::<Refused>()
    {
        return refused.to_string();
    }
    format!("the API server's certificate is not trusted: {why}")
}

/// The rustls client configuration for the API server: the ring provider,
/// TLS 1.2 and 1.3, [`ApiServerVerifier`], no client certificate.
pub fn client_config(ca: CaBundle) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = ApiServerVerifier::new(ca, provider.clone())?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The connector that wraps ureq's TCP transport in rustls with the API
/// server's configuration. It never passes a plain connection on: the
/// token goes over TLS or not at all.
#[derive(Debug)]
pub struct ApiServerTls {
    config: Arc<ClientConfig>,
}

impl ApiServerTls {
    pub fn new(config: Arc<ClientConfig>) -> ApiServerTls {
        ApiServerTls { config }
    }
}

impl<In: Transport> Connector<In> for ApiServerTls {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        if !details.needs_tls() {
            return Err(ureq::Error::Tls(
                "the API server is reached over https only",
            ));
        }
        let host = details
            .uri
            .host()
            .ok_or(ureq::Error::Tls("no host in the API server URL"))?;
        // `[::1]` in a URL is `::1` as a name.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ureq::Error::Tls("the API server host is neither a DNS name nor an IP"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        if let Err(e) = conn.complete_io(&mut sock) {
            return Err(handshake_error(e));
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned::new(conn, sock),
        })))
    }
}

/// A failed handshake: a refused certificate as the rustls error itself
/// (a configuration problem, which the client tells from a network
/// failure), anything else as ureq reads an I/O error.
fn handshake_error(e: std::io::Error) -> ureq::Error {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if !certificate {
        return e.into();
    }
    match e
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(r)) => ureq::Error::Rustls(*r),
        // Not reached: checked just above.
        _ => ureq::Error::Tls("the API server's certificate was refused"),
    }
}

/// HTTP over the rustls stream.
pub struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.sock.set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.sock.set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.sock.get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    /// A self-signed CA certificate that is also a server certificate, as
    /// Go's `httptest.NewTLSServer` presents (and the upstream test writes
    /// into `ca.crt`).
    fn self_signed_ca(names: &[&str], cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p
    }

    fn der(p: CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("certificate").der().clone()
    }

    fn verifier(ca: &[&CertificateDer<'static>]) -> ApiServerVerifier {
        let certs = ca.iter().map(|c| (*c).clone()).collect();
        ApiServerVerifier::new(
            CaBundle::new(Path::new("/sa/ca.crt"), certs),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .expect("verifier")
    }

    fn verify(
        v: &ApiServerVerifier,
        cert: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        host: &str,
    ) -> Result<(), String> {
        let name = ServerName::try_from(host.to_string()).expect("server name");
        v.verify_server_cert(cert, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(why) => refusal(&why),
                other => panic!("not a certificate error: {other}"),
            })
    }

    fn fingerprint(c: &CertificateDer<'_>) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, c.as_ref());
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn a_self_signed_ca_certificate_that_is_ca_crt_itself_is_accepted() {
        let cert = der(self_signed_ca(
            &["example.com", "127.0.0.1", "::1"],
            "go-httptest",
        ));
        let v = verifier(&[&cert]);
        assert_eq!(verify(&v, &cert, &[], "127.0.0.1"), Ok(()));
        assert_eq!(verify(&v, &cert, &[], "::1"), Ok(()));
        assert_eq!(verify(&v, &cert, &[], "example.com"), Ok(()));
        // Without the exact match, rustls' chain verification alone refuses
        // it (the case this verifier exists for).
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let chain = v
            .chain
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(chain.to_string().contains("CaUsedAsEndEntity"), "{chain}");
    }

    #[test]
    fn it_is_also_accepted_among_other_certificates_in_ca_crt() {
        let other = der(self_signed_ca(&[], "some-other-ca"));
        let cert = der(self_signed_ca(&["127.0.0.1"], "apiserver"));
        let v = verifier(&[&other, &cert]);
        assert_eq!(verify(&v, &cert, &[], "127.0.0.1"), Ok(()));
    }

    #[test]
    fn a_different_self_signed_certificate_is_refused_naming_both() {
        let trusted = der(self_signed_ca(&["127.0.0.1"], "the-cluster-ca"));
        let presented = der(self_signed_ca(&["127.0.0.1"], "an-impostor"));
        let v = verifier(&[&trusted]);
        let e = verify(&v, &presented, &[], "127.0.0.1").unwrap_err();
        assert!(
            e.starts_with("the API server's certificate is not trusted: it is not one of the certificates in ca.crt, and as a chain to them it is refused (CaUsedAsEndEntity). "),
            "{e}"
        );
        assert!(
            e.contains(
                "The server at 127.0.0.1 presented [subject \"CN=an-impostor\", self-signed, valid "
            ),
            "{e}"
        );
        assert!(e.contains(&fingerprint(&presented)), "{e}");
        assert!(
            e.contains(
                "/sa/ca.crt holds 1 certificate: [subject \"CN=the-cluster-ca\", self-signed"
            ),
            "{e}"
        );
        assert!(e.contains(&fingerprint(&trusted)), "{e}");
        assert!(
            e.contains("Fix: /sa/ca.crt must hold the CA that issued the API server's certificate, or that certificate itself"),
            "{e}"
        );
    }

    #[test]
    fn an_expired_certificate_in_ca_crt_is_refused() {
        let mut p = self_signed_ca(&["127.0.0.1"], "expired");
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let cert = der(p);
        let v = verifier(&[&cert]);
        let e = verify(&v, &cert, &[], "127.0.0.1").unwrap_err();
        assert!(e.contains("certificate expired: verification time"), "{e}");
        assert!(
            e.contains("valid 2000-01-01T00:00:00Z to 2001-01-01T00:00:00Z"),
            "{e}"
        );
        assert!(
            e.contains("Fix: renew the API server's certificate, or correct this machine's clock"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_in_ca_crt_not_yet_valid_is_refused() {
        let mut p = self_signed_ca(&["127.0.0.1"], "future");
        p.not_before = rcgen::date_time_ymd(2999, 1, 1);
        p.not_after = rcgen::date_time_ymd(3000, 1, 1);
        let cert = der(p);
        let v = verifier(&[&cert]);
        let e = verify(&v, &cert, &[], "127.0.0.1").unwrap_err();
        assert!(e.contains("certificate not valid yet"), "{e}");
    }

    #[test]
    fn a_certificate_in_ca_crt_for_another_name_is_refused() {
        let cert = der(self_signed_ca(&["example.com", "10.0.0.1"], "elsewhere"));
        let v = verifier(&[&cert]);
        let e = verify(&v, &cert, &[], "127.0.0.1").unwrap_err();
        assert!(
            e.contains("certificate not valid for name \"127.0.0.1\""),
            "{e}"
        );
        assert!(
            e.contains("Fix: reach the API server by a name or address its certificate holds (KUBERNETES_SERVICE_HOST), or give the API server a certificate valid for 127.0.0.1"),
            "{e}"
        );
        let e = verify(&v, &cert, &[], "kubernetes.default.svc").unwrap_err();
        assert!(e.contains("certificate not valid for name"), "{e}");
    }

    #[test]
    fn a_chain_to_the_ca_in_ca_crt_is_verified_as_before() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "cluster-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap().der().clone();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: &[&str]| {
            let mut p =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.signed_by(&KeyPair::generate().unwrap(), &issuer)
                .unwrap()
                .der()
                .clone()
        };
        let v = verifier(&[&ca_cert]);
        assert_eq!(verify(&v, &leaf(&["127.0.0.1"]), &[], "127.0.0.1"), Ok(()));
        let e = verify(&v, &leaf(&["example.com"]), &[], "127.0.0.1").unwrap_err();
        assert!(e.contains("certificate not valid for name"), "{e}");
        assert!(e.contains("issuer \"CN=cluster-ca\""), "{e}");
        // The CA itself presented as the server certificate (in ca.crt, but
        // not valid for the name) is still refused.
        let e = verify(&v, &ca_cert, &[], "127.0.0.1").unwrap_err();
        assert!(e.contains("certificate not valid for name"), "{e}");
    }

    #[test]
    fn an_unknown_issuer_is_explained() {
        let other_key = KeyPair::generate().unwrap();
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        other
            .distinguished_name
            .push(DnType::CommonName, "other-ca");
        let issuer = Issuer::new(other, other_key);
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let leaf = p
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .der()
            .clone();
        let trusted = der(self_signed_ca(&[], "cluster-ca"));
        let v = verifier(&[&trusted]);
        let e = verify(&v, &leaf, &[], "127.0.0.1").unwrap_err();
        assert!(
            e.contains("not trusted: it is neither one of the certificates in ca.crt nor issued by one of them."),
            "{e}"
        );
        assert!(
            e.contains("[subject \"CN=kube-apiserver\", issuer \"CN=other-ca\""),
            "{e}"
        );
    }

    #[test]
    fn a_ca_crt_without_usable_certificates_is_refused_at_set_up() {
        let e = ApiServerVerifier::new(
            CaBundle::new(
                Path::new("/sa/ca.crt"),
                vec![CertificateDer::from(vec![1, 2, 3])],
            ),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .unwrap_err();
        assert!(
            e.contains("none of the 1 certificates in /sa/ca.crt can be used as a CA"),
            "{e}"
        );
    }

    #[test]
    fn describe_names_subject_issuer_validity_and_fingerprint() {
        let mut p = self_signed_ca(&["127.0.0.1"], "apiserver");
        p.distinguished_name
            .push(DnType::OrganizationName, "Acme Co");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let cert = der(p);
        let d = describe(cert.as_ref());
        assert!(d.starts_with("[subject \""), "{d}");
        assert!(d.contains("CN=apiserver") && d.contains("O=Acme Co"), "{d}");
        assert!(
            d.contains("self-signed, valid 2020-01-01T00:00:00Z to 2030-01-01T00:00:00Z"),
            "{d}"
        );
        assert!(
            d.ends_with(&format!("SHA-256 {}]", fingerprint(&cert))),
            "{d}"
        );
        assert!(describe(b"junk").starts_with("[not a certificate that can be read, SHA-256 "));
    }
}
