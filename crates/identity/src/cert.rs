//! Client certificates: the subject of a certificate the TLS layer already verified.

use std::collections::BTreeMap;

use gateway_core::{AuthMethod, GatewayError, Identity};
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Which part of the certificate subject becomes the identity's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertSubjectField {
    /// The single common name (CN) attribute.
    #[default]
    CommonName,
    /// The whole distinguished name in RFC 4514-like form, e.g. `CN=alice, OU=dba, O=Example`.
    DistinguishedName,
}

/// How a client certificate maps to an identity.
#[derive(Debug, Clone, Default)]
pub struct CertConfig {
    /// Which subject field is the identity's subject.
    pub subject_from: CertSubjectField,
    /// Whether the subject's organizational unit (OU) attributes become groups.
    pub groups_from_ou: bool,
}

/// Turns a verified client certificate into an [`Identity`] with
/// [`AuthMethod::ClientCertificate`].
///
/// It does not verify the chain or the validity period: the TLS listener did that against its CA
/// before the handshake finished. It only reads the subject.
#[derive(Debug, Clone)]
pub struct CertAuthenticator {
    config: CertConfig,
}

impl CertAuthenticator {
    /// An authenticator reading subjects as `config` says.
    pub fn new(config: CertConfig) -> Self {
        Self { config }
    }

    /// Reads the identity from a DER-encoded certificate. Besides subject and groups, the claims
    /// hold `subject_dn`, `issuer_dn`, `serial` (hex) and `not_after` (Unix seconds) for audit.
    pub fn authenticate(&self, certificate_der: &[u8]) -> Result<Identity, GatewayError> {
        let (_, cert) = X509Certificate::from_der(certificate_der)
            .map_err(|_| GatewayError::auth("client certificate could not be parsed"))?;
        let subject_name = cert.subject();
        let dn = subject_name.to_string();
        let subject = match self.config.subject_from {
            CertSubjectField::CommonName => {
                let mut names = subject_name.iter_common_name();
                let first = names.next().ok_or_else(|| {
                    GatewayError::auth("client certificate subject has no common name (CN)")
                })?;
                if names.next().is_some() {
                    return Err(GatewayError::auth(
                        "client certificate subject has more than one common name (CN)",
                    ));
                }
                first
                    .as_str()
                    .map_err(|_| {
                        GatewayError::auth(
                            "client certificate common name (CN) is not a text string",
                        )
                    })?
                    .to_owned()
            }
            CertSubjectField::DistinguishedName => dn.clone(),
        };
        if subject.trim().is_empty() {
            return Err(GatewayError::auth(match self.config.subject_from {
                CertSubjectField::CommonName => "client certificate common name (CN) is empty",
                CertSubjectField::DistinguishedName => "client certificate has an empty subject",
            }));
        }
        let mut groups = Vec::new();
        if self.config.groups_from_ou {
            for ou in subject_name.iter_organizational_unit() {
                let ou = ou.as_str().map_err(|_| {
                    GatewayError::auth(
                        "client certificate organizational unit (OU) is not a text string",
                    )
                })?;
                if !ou.is_empty() && !groups.iter().any(|g| g == ou) {
                    groups.push(ou.to_owned());
                }
            }
        }
        let mut claims = BTreeMap::new();
        claims.insert("subject_dn".to_owned(), Value::String(dn));
        claims.insert(
            "issuer_dn".to_owned(),
            Value::String(cert.issuer().to_string()),
        );
        claims.insert(
            "serial".to_owned(),
            Value::String(cert.raw_serial_as_string()),
        );
        claims.insert(
            "not_after".to_owned(),
            Value::from(cert.validity().not_after.timestamp()),
        );
        Ok(Identity {
            subject,
            groups,
            auth_method: AuthMethod::ClientCertificate,
            claims,
        })
    }
}
