//! Certificate verifiers for SPIFFE mTLS.
//!
//! Both sides verify the chain to the trust anchors of their own current [`IdentityCert`] (so a
//! rotated trust bundle applies to the next handshake); a client with no identity yet (a node or
//! waypoint calling mesh-control for its first certificate) verifies against a trust bundle it was
//! given. Hostname checks do not apply: identity is the leaf's URI SAN. The client accepts only
//! the expected identities; the server accepts any identity of its own trust domain and leaves
//! authorization to policy.

use std::{fmt, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::IdentityCert;
use crate::identity::{cert::LeafInfo, SpiffeId};

/// Where a verifier finds the roots it trusts.
pub(crate) enum Anchors {
    /// Those that came with the local identity's current certificate (they rotate with it).
    Local(Arc<IdentityCert>),
    /// A trust bundle given on its own, for a client that has no certificate.
    Bundle(Vec<TrustAnchor<'static>>),
}

impl Anchors {
    /// Verifies `end_entity` up to these anchors and returns the leaf identity.
    fn verify_chain(
        &self,
        provider: &CryptoProvider,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        match self {
            Self::Local(local) => verify_chain(
                &local.loaded().anchors,
                provider,
                end_entity,
                intermediates,
                now,
                usage,
            ),
            Self::Bundle(anchors) => {
                verify_chain(anchors, provider, end_entity, intermediates, now, usage)
            }
        }
    }
}

/// Verifies `end_entity` up to `anchors` and returns the leaf identity.
fn verify_chain(
    anchors: &[TrustAnchor<'_>],
    provider: &CryptoProvider,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
) -> Result<SpiffeId, rustls::Error> {
    let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    cert.verify_for_usage(
        provider.signature_verification_algorithms.all,
        anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(pki_error)?;
    LeafInfo::parse(end_entity)
        .map(|info| info.identity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let kind = match error {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

/// The handshake signature checks, the same for both verifiers: the provider's algorithms.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Client side: the server must prove one of the expected identities.
pub(crate) struct ServerVerifier {
    pub(crate) anchors: Anchors,
    pub(crate) expected: Vec<SpiffeId>,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let usage = KeyUsage::server_auth();
        let peer =
            self.anchors
                .verify_chain(&self.provider, end_entity, intermediates, now, usage)?;
        if self.expected.contains(&peer) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::debug!(%peer, expected = ?self.expected, "server identity not expected");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    signature_checks!();
}

/// Server side: a client certificate is mandatory and must be from the local trust domain.
pub(crate) struct ClientVerifier {
    pub(crate) local: Arc<IdentityCert>,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("local", &self.local.identity().to_string())
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let usage = KeyUsage::client_auth();
        let peer = verify_chain(
            &self.local.loaded().anchors,
            &self.provider,
            end_entity,
            intermediates,
            now,
            usage,
        )?;
        if peer.trust_domain() == self.local.identity().trust_domain() {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::debug!(%peer, "client from foreign trust domain rejected");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    signature_checks!();
}
