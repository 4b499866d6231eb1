//! What the gateway-core tests share: an authenticator that admits anyone, the one target they
//! use and a session request for it.

use std::collections::BTreeMap;

use gateway_core::identity::AuthMethod;
use gateway_core::session::SessionRequest;
use gateway_core::*;

/// Admits every login as the user it names, with no groups.
pub struct Anyone;

#[async_trait::async_trait]
impl Authenticator for Anyone {
    async fn authenticate(
        &self,
        c: &Credentials,
        _: &ClientInfo,
    ) -> Result<Identity, GatewayError> {
        Ok(Identity {
            subject: c.user().to_owned(),
            groups: vec![],
            auth_method: AuthMethod::Password,
            claims: BTreeMap::new(),
        })
    }
}

/// The PostgreSQL target `app` (never connected to: these tests stop at the session).
pub fn target() -> Target {
    Target {
        name: "app".into(),
        protocol: Protocol::Postgres,
        host: "127.0.0.1".into(),
        port: 5432,
        database: "app".into(),
        user: "svc".into(),
        password: None,
        tls: UpstreamTls::Disable,
        labels: BTreeMap::new(),
    }
}

/// A login as `user` to `app` over plain PostgreSQL.
pub fn request(user: &str) -> SessionRequest {
    SessionRequest {
        credentials: Credentials::Password {
            user: user.into(),
            password: "x".into(),
        },
        client: ClientInfo {
            addr: "127.0.0.1:40000".parse().unwrap(),
            protocol: "postgres",
            tls: false,
            application: None,
        },
        protocol: Protocol::Postgres,
        database: "app".into(),
        require_user_match: false,
    }
}
