//! rustls configuration (aws-lc-rs provider only), the client-certificate checks (any proven
//! key at the handshake; the chain checked after it against the pool CA or a region's CA), and
//! what the TLS acceptor learns about a connection (client address, pool-CA certificate name).

use anyhow::Context;
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate PEM does not parse; give PEM 'CERTIFICATE' blocks")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate found in the PEM text");
    Ok(certs)
}

pub(crate) fn roots(ca_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots
            .add(cert)
            .context("the CA certificate is not a valid trust anchor")?;
    }
    Ok(roots)
}

/// Server configuration; with `client_ca` it also accepts (but does not require) client
/// certificates: any certificate whose key the client proves it holds. Whether it chains to
/// the pool CA (a partition, for the peer API) or to an accepted region's CA is decided
/// after the handshake ([`PoolChain`], `region_trust`).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> anyhow::Result<rustls::ServerConfig> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        anyhow::anyhow!("the TLS private key does not parse (expected a PEM private key)")
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            // The CA must be a usable trust anchor (checked here, used after the handshake).
            roots(ca)?;
            builder.with_client_cert_verifier(Arc::new(AnyClientCert::new(&provider())))
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs(cert_pem)?, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Client configuration trusting `ca_pem`, optionally presenting a client certificate.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    Ok(match identity {
        Some((cert_pem, key_pem)) => {
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|_| anyhow::anyhow!("the client private key does not parse"))?;
            builder.with_client_auth_cert(certs(cert_pem)?, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// The certificate, key and CA of `files` (the key zeroized when dropped).
pub(crate) fn read_files(
    files: &crate::config::TlsFiles,
) -> anyhow::Result<(String, zeroize::Zeroizing<String>, String)> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok((
        read(&files.cert_file)?,
        zeroize::Zeroizing::new(read(&files.key_file)?),
        read(&files.ca_file)?,
    ))
}

/// One digest of the three files' contents (to notice a rotation).
pub(crate) fn files_digest(cert: &str, key: &str, ca: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [cert, key, ca] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The partition's TLS server side, re-read when its files change: the operator (or
/// cert-manager) rotates certificates before they expire and the kubelet swaps the mounted
/// Secret's files; new connections get the new certificate, open ones keep theirs.
pub struct ReloadingAcceptor {
    files: crate::config::TlsFiles,
    current: std::sync::RwLock<(tokio_rustls::TlsAcceptor, [u8; 32], PoolChain)>,
}

/// Checks that a client chain was issued by the pool CA (a partition of this pool).
#[derive(Clone)]
pub struct PoolChain(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl PoolChain {
    pub fn new(ca_pem: &str) -> anyhow::Result<PoolChain> {
        Ok(PoolChain(chain_verifier(ca_pem)?))
    }

    /// Whether `chain` (end entity first) chains to the pool CA.
    pub fn verifies(&self, chain: &[CertificateDer<'_>]) -> bool {
        verify_chain(self.0.as_ref(), chain)
    }
}

impl ReloadingAcceptor {
    pub fn load(files: &crate::config::TlsFiles) -> anyhow::Result<ReloadingAcceptor> {
        let (acceptor, digest, chain) = Self::build(files)?;
        Ok(ReloadingAcceptor {
            files: files.clone(),
            current: std::sync::RwLock::new((acceptor, digest, chain)),
        })
    }

    fn build(
        files: &crate::config::TlsFiles,
    ) -> anyhow::Result<(tokio_rustls::TlsAcceptor, [u8; 32], PoolChain)> {
        let (cert, key, ca) = read_files(files)?;
        let cfg = server_config(&cert, &key, Some(&ca))?;
        Ok((
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            files_digest(&cert, &key, &ca),
            PoolChain::new(&ca)?,
        ))
    }

    /// The acceptor for the next connection, and the pool-CA check of its client chain.
    pub fn acceptor(&self) -> (tokio_rustls::TlsAcceptor, PoolChain) {
        let g = self.current.read().unwrap_or_else(|p| p.into_inner());
        (g.0.clone(), g.2.clone())
    }

    /// Re-read the files; switch to them if their contents changed and they form a valid
    /// configuration. `Ok(true)`: switched. On an error the current configuration stays.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let (cert, key, ca) = read_files(&self.files)?;
        let digest = files_digest(&cert, &key, &ca);
        if digest == self.current.read().unwrap_or_else(|p| p.into_inner()).1 {
            return Ok(false);
        }
        let context = "the changed TLS files do not form a valid configuration; still serving the previous certificate";
        let cfg = server_config(&cert, &key, Some(&ca)).context(context)?;
        let chain = PoolChain::new(&ca).context(context)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            digest,
            chain,
        );
        Ok(true)
    }
}

/// The client address of a connection (set by the TLS acceptor on every request).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// The pool-CA client certificate's common name, set by the TLS acceptor (None: no
/// certificate was presented).
#[derive(Clone, Debug)]
pub struct PeerCertName(pub Option<String>);

/// Common name of a DER certificate (already verified against the pool CA by rustls).
pub fn cert_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsFiles;

    async fn served_cert(acceptor: tokio_rustls::TlsAcceptor, ca_pem: &str) -> Vec<u8> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { acceptor.accept(server_io).await.map(|_| ()) });
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pem, None).unwrap()));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, client_io).await.unwrap();
        let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        server.await.unwrap().unwrap();
        der
    }

    fn der_of(pem: &str) -> Vec<u8> {
        certs(pem).unwrap()[0].to_vec()
    }

    #[tokio::test]
    async fn rotated_files_are_served_to_new_connections_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::generate_ca("test CA", 30).unwrap();
        let files = TlsFiles {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            ca_file: dir.path().join("ca.crt"),
        };
        let issue = |files: &TlsFiles| {
            let leaf =
                crate::pki::issue_leaf(&ca, "p0", &["localhost".to_string()], &[], 30).unwrap();
            std::fs::write(&files.cert_file, &leaf.cert_pem).unwrap();
            std::fs::write(&files.key_file, &leaf.key_pem).unwrap();
            leaf.cert_pem
        };
        std::fs::write(&files.ca_file, &ca.cert_pem).unwrap();
        let first = issue(&files);
        let r = ReloadingAcceptor::load(&files).unwrap();
        assert_eq!(
            served_cert(r.acceptor().0, &ca.cert_pem).await,
            der_of(&first)
        );
        assert!(!r.reload_if_changed().unwrap(), "nothing changed yet");

        let second = issue(&files);
        assert!(r.reload_if_changed().unwrap());
        assert_eq!(
            served_cert(r.acceptor().0, &ca.cert_pem).await,
            der_of(&second)
        );

        // A half-written rotation (certificate without its key) is refused; the last good
        // configuration keeps serving.
        std::fs::write(&files.key_file, "not a key").unwrap();
        let e = r.reload_if_changed().unwrap_err();
        assert!(
            format!("{e:#}").contains("still serving the previous certificate"),
            "{e:#}"
        );
        assert_eq!(
            served_cert(r.acceptor().0, &ca.cert_pem).await,
            der_of(&second)
        );
    }
}

/// The handshake's client-certificate check: any certificate, with a valid proof of
/// possession of its key (the handshake signature). Whom it belongs to is decided after the
/// handshake ([`verify_chain`], [`crate::region_trust::RegionTrust::region_of`]), never by this verifier.
#[derive(Debug)]
pub struct AnyClientCert {
    schemes: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    pub fn new(provider: &rustls::crypto::CryptoProvider) -> AnyClientCert {
        AnyClientCert {
            schemes: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

/// A chain verifier for one CA (PEM).
pub fn chain_verifier(ca_pem: &str) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let roots = crate::tls::roots(ca_pem)?;
    Ok(rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()?)
}

/// Whether `chain` (end entity first) verifies for client authentication under `verifier`.
pub fn verify_chain(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'_>]) -> bool {
    let Some((ee, rest)) = chain.split_first() else {
        return false;
    };
    verifier
        .verify_client_cert(ee, rest, UnixTime::now())
        .is_ok()
}
