//! Who gets in through the PostgreSQL listener: bad tokens (table-driven), static users, TLS with
//! a token and with a client certificate, `require_tls`, and unknown databases.
//!
//! A refused login must carry SQLSTATE 28P01 and a message naming the check that failed, and must
//! never echo the token or the gateway's secret.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{
    assert_success, sqlstate, stderr, unix_now, JwtKeys, Options, Pki, StaticUser, TestGateway,
};
use identity::{mint_token, MintKey};
use serde_json::json;
use std::time::{Duration, SystemTime};

/// Signs arbitrary claims with HS256 (for tokens the mint refuses to make, such as expired ones).
fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// Asserts a refused login: SQLSTATE `code`, a message containing `names_check`, and no trace of
/// `secrets` anywhere in what the client was told.
fn assert_refused(
    case: &str,
    result: Result<tokio_postgres::Client, tokio_postgres::Error>,
    code: &str,
    names_check: &str,
    secrets: &[&str],
) {
    let e = match result {
        Ok(_) => panic!("{case}: the login was admitted"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&e), code, "{case}: {e:?}");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.severity(), "FATAL", "{case}");
    assert!(
        db.message()
            .to_lowercase()
            .contains(&names_check.to_lowercase()),
        "{case}: message {:?} does not name the check ({names_check:?})",
        db.message()
    );
    let told = format!("{} {:?} {:?} {e}", db.message(), db.detail(), db.hint());
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !told.contains(secret),
            "{case}: the error repeats a secret or the token: {told}"
        );
        // Nor any sizeable piece of it (e.g. the signature segment of a token).
        for piece in secret.split('.').filter(|p| p.len() >= 16) {
            assert!(
                !told.contains(piece),
                "{case}: the error repeats part of a token: {told}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_28p01_naming_the_check() {
    let gw = TestGateway::start().await;
    let now = unix_now();
    let valid = |sub: &str| gw.token(sub);
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(
            json!({"sub": "mallory", "iss": common::ISSUER, "aud": common::AUDIENCE, "exp": now + 600}).to_string()
        )
    );
    let tampered = {
        // A valid token whose payload is swapped for one naming someone else; signature kept.
        let t = valid("alice");
        let parts: Vec<&str> = t.split('.').collect();
        let payload = json!({"sub": "admin", "iss": common::ISSUER, "aud": common::AUDIENCE, "exp": now + 600, "groups": ["admin"]});
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        )
    };
    let with = |f: &dyn Fn(&mut identity::MintRequest)| {
        let mut req = gw.mint_request("alice");
        f(&mut req);
        mint_token(&req).expect("mint")
    };
    // (case, password, fragment the message must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong signature",
            with(&|r| r.key = MintKey::Hs256("a-different-secret-that-is-long-enough-0123".into())),
            "signature",
        ),
        ("tampered payload", tampered, "signature"),
        (
            "expired",
            hs256(
                &gw.secret,
                json!({"sub": "alice", "iss": common::ISSUER, "aud": common::AUDIENCE, "iat": now - 7200, "exp": now - 3600}),
            ),
            "expired",
        ),
        (
            "not yet valid",
            with(&|r| r.not_before = Some(SystemTime::now() + Duration::from_secs(3600))),
            "not yet valid",
        ),
        (
            "issued in the future beyond the leeway (5s)",
            hs256(
                &gw.secret,
                json!({"sub": "alice", "iss": common::ISSUER, "aud": common::AUDIENCE, "iat": now + 3600, "exp": now + 7200}),
            ),
            "issued in the future",
        ),
        (
            "wrong audience",
            with(&|r| r.audience = Some("someone-else".into())),
            "audience",
        ),
        ("no audience", with(&|r| r.audience = None), "aud"),
        (
            "wrong issuer",
            with(&|r| r.issuer = Some("https://evil.example".into())),
            "issuer",
        ),
        (
            "no subject",
            hs256(
                &gw.secret,
                json!({"iss": common::ISSUER, "aud": common::AUDIENCE, "exp": now + 600}),
            ),
            "subject",
        ),
        ("alg none", alg_none, "alg none"),
        ("garbage", "this is not a token".into(), "wrong password"),
        (
            "garbage in three parts",
            "abc.def.ghi".into(),
            "token header",
        ),
        ("empty password", String::new(), "password required"),
    ];
    for (case, password, names_check) in &cases {
        let result = gw.try_connect(password).await;
        assert_refused(case, result, "28P01", names_check, &[&gw.secret, password]);
    }
    // Controls: tokens that differ from the minted shape but are valid get in.
    let accepted = [
        (
            "audience list naming this gateway",
            hs256(
                &gw.secret,
                json!({"sub": "alice", "iss": common::ISSUER, "aud": ["other", common::AUDIENCE], "exp": now + 600}),
            ),
        ),
        (
            "expired within the leeway (5s)",
            hs256(
                &gw.secret,
                json!({"sub": "alice", "iss": common::ISSUER, "aud": common::AUDIENCE, "exp": now - 1}),
            ),
        ),
        (
            "issued just now by a clock within the leeway (5s)",
            hs256(
                &gw.secret,
                json!({"sub": "alice", "iss": common::ISSUER, "aud": common::AUDIENCE, "iat": now + 2, "exp": now + 600}),
            ),
        ),
        (
            "numeric subject, groups as one string",
            hs256(
                &gw.secret,
                json!({"sub": 4711, "iss": common::ISSUER, "aud": common::AUDIENCE, "exp": now + 600, "groups": "a b"}),
            ),
        ),
    ];
    for (case, token) in &accepted {
        let client = gw
            .try_connect(token)
            .await
            .unwrap_or_else(|e| panic!("{case}: refused: {e:?}"));
        client
            .query_one("select 1", &[])
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    // After all of that, a good token still works.
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_are_refused_by_an_rs256_gateway() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let public_pem = key.public_key_pem();
    let gw = TestGateway::start_with(Options {
        jwt: JwtKeys::PublicKey {
            alg: "RS256".into(),
            pem: public_pem.clone(),
        },
        ..Options::default()
    })
    .await;

    // Positive control: an RS256 token from the matching private key is admitted.
    let mut req = gw.mint_request("rsa-user");
    req.key = MintKey::PrivateKeyPem {
        alg: "RS256".into(),
        pem: key.serialize_pem().into_bytes(),
    };
    let good = mint_token(&req).expect("mint RS256");
    let client = gw.connect_tokio_postgres(&good).await;
    let app: String = client
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "portcullis:rsa-user");

    // The classic confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let mut req = gw.mint_request("mallory");
    req.key = MintKey::Hs256(public_pem.clone());
    let forged = mint_token(&req).expect("mint forged");
    assert_refused(
        "HS256 with the public key as secret",
        gw.try_connect(&forged).await,
        "28P01",
        "HS256",
        &[&forged],
    );
    // And a plain HS256 token.
    let hs = gw.token("mallory");
    assert_refused(
        "HS256 token",
        gw.try_connect(&hs).await,
        "28P01",
        "not allowed",
        &[&hs],
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_users_log_in_with_their_password_only() {
    let password = "correct horse battery staple";
    let gw = TestGateway::start_with(Options {
        users: vec![StaticUser {
            name: "breakglass".into(),
            password: password.into(),
            groups: vec!["admin".into()],
        }],
        ..Options::default()
    })
    .await;
    let (client, conn) = gw
        .pg_config("breakglass", password)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("static user login");
    tokio::spawn(conn);
    let app: String = client
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "portcullis:breakglass");

    let wrong = gw
        .pg_config("breakglass", "Correct horse battery staple")
        .connect(tokio_postgres::NoTls)
        .await
        .map(|(c, _)| c);
    assert_refused(
        "wrong static password",
        wrong,
        "28P01",
        "wrong password",
        &["Correct horse battery staple"],
    );
    // A valid token sent for a static user's name is that user's (wrong) password, not a token.
    let token = gw.token("breakglass");
    let as_user = gw
        .pg_config("breakglass", &token)
        .connect(tokio_postgres::NoTls)
        .await
        .map(|(c, _)| c);
    assert_refused(
        "token for a static user name",
        as_user,
        "28P01",
        "wrong password",
        &[&token],
    );
    // An unknown user with a password.
    let unknown = gw
        .pg_config("nobody", password)
        .connect(tokio_postgres::NoTls)
        .await
        .map(|(c, _)| c);
    assert_refused(
        "unknown static user",
        unknown,
        "28P01",
        "wrong password",
        &[password],
    );
    // Tokens keep working beside static users.
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_token_and_with_a_client_certificate() {
    let gw = TestGateway::start_with(Options {
        tls: true,
        client_certs: true,
        ..Options::default()
    })
    .await;
    let pki = gw.pki.as_ref().unwrap();
    let ca = pki.ca_file.display().to_string();

    // psql (libpq, OpenSSL) verifying the gateway's certificate, logging in with a token.
    let out = gw
        .psql(
            &[
                "-At",
                "-c",
                "select current_setting('application_name')",
                "-c",
                "\\conninfo",
            ],
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
        )
        .await;
    let text = assert_success("psql verify-full with a token", &out);
    assert!(text.starts_with("psql (portcullis:alice)\n"), "{text}");
    assert!(
        text.contains("SSL connection"),
        "\\conninfo does not report TLS: {text}"
    );

    // psql with a client certificate and no password at all: the CN is the subject.
    let cert = pki.client_cert("cert-user");
    let (cert_file, key_file) = (
        cert.cert_file.display().to_string(),
        cert.key_file.display().to_string(),
    );
    let out = gw
        .psql(
            &["-At", "-c", "select current_setting('application_name')"],
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", &ca),
                ("PGSSLCERT", &cert_file),
                ("PGSSLKEY", &key_file),
                ("PGPASSWORD", ""),
            ],
        )
        .await;
    assert_eq!(
        assert_success("psql with a client certificate", &out),
        "psql (portcullis:cert-user)\n"
    );

    // The same from Rust (rustls): token, then certificate.
    let client = gw
        .try_connect_tls("alice", Some(&gw.token("alice")), None)
        .await
        .expect("TLS with a token");
    let app: String = client
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "portcullis:alice");
    let rust_cert = pki.client_cert("rust-cert");
    let client = gw
        .try_connect_tls("anyone", None, Some(&rust_cert))
        .await
        .expect("TLS with a client certificate");
    let app: String = client
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "portcullis:rust-cert");
    // Large values over TLS too.
    let big: Vec<u8> = client
        .query_one("select repeat('x', 3000000)::bytea", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 3_000_000);
    // A cancel request that negotiates TLS first reaches the query too.
    let token = client.cancel_token();
    let mut sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let result = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token
            .cancel_query(common::tls::RustlsConnector(pki.rustls_client(None)))
            .await
            .expect("cancel over TLS");
        match tokio::time::timeout(Duration::from_secs(1), &mut sleeper).await {
            Ok(done) => break done.unwrap(),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the TLS cancel never reached the query"
            ),
        }
    };
    assert_eq!(sqlstate(&result.unwrap_err()), "57014");

    // A certificate from a CA the gateway does not trust is refused (at the TLS handshake).
    let stranger = Pki::generate("stranger").client_cert("intruder");
    let out = gw
        .psql(
            &["-At", "-c", "select current_setting('application_name')"],
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", &ca),
                ("PGSSLCERT", &stranger.cert_file.display().to_string()),
                ("PGSSLKEY", &stranger.key_file.display().to_string()),
                ("PGPASSWORD", ""),
            ],
        )
        .await;
    assert!(
        !out.status.success(),
        "a certificate from an unknown CA was admitted: {}",
        common::stdout(&out)
    );
    assert!(!common::stdout(&out).contains("intruder"));

    // Plain TCP still works for tokens on loopback when TLS is optional.
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_plain_connections() {
    let gw = TestGateway::start_with(Options {
        tls: true,
        require_tls: true,
        ..Options::default()
    })
    .await;
    let token = gw.token("alice");
    let plain = gw.try_connect(&token).await;
    assert_refused(
        "plain connection",
        plain,
        "28000",
        "only TLS",
        &[&token, &gw.secret],
    );

    let out = gw
        .psql(&["-At", "-c", "select 1"], &[("PGSSLMODE", "disable")])
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("accepts only TLS"),
        "psql was not told why: {}",
        stderr(&out)
    );

    // TLS clients get in.
    let ca = gw.pki.as_ref().unwrap().ca_file.display().to_string();
    let out = gw
        .psql(
            &["-At", "-c", "select 1"],
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
        )
        .await;
    assert_eq!(assert_success("psql over TLS", &out), "1\n");
    let client = gw
        .try_connect_tls("alice", Some(&token), None)
        .await
        .expect("TLS with a token");
    let v: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_3d000() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let mut config = gw.pg_config("alice", &token);
    config.dbname("no_such_target");
    let result = config.connect(tokio_postgres::NoTls).await.map(|(c, _)| c);
    assert_refused(
        "unknown database",
        result,
        "3D000",
        "no_such_target",
        &[&token, &gw.secret],
    );
    // The upstream's other databases are not reachable by their own names either.
    config.dbname("postgres");
    let result = config.connect(tokio_postgres::NoTls).await.map(|(c, _)| c);
    assert_refused(
        "upstream database that is not a target",
        result,
        "3D000",
        "postgres",
        &[&token],
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_missing_upstream_is_08001_without_service_details() {
    // A port nothing listens on: bind one, note it, close it.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = TestGateway::start_with(Options {
        extra_targets: vec![
            ("down".into(), closed_port, "whatever".into()),
            (
                "missing".into(),
                common::UPSTREAM_PORT,
                "pc_this_database_does_not_exist".into(),
            ),
        ],
        ..Options::default()
    })
    .await;
    let token = gw.token("alice");
    for (target, names) in [
        ("down", "could not connect"),
        ("missing", "could not connect"),
    ] {
        let mut config = gw.pg_config("alice", &token);
        config.dbname(target);
        let result = config.connect(tokio_postgres::NoTls).await.map(|(c, _)| c);
        assert_refused(target, result, "08001", names, &[&token, &gw.secret]);
    }
    // The gateway goes on serving its healthy target.
    gw.assert_serves_normal_clients().await;
    gw.shutdown().await;
}

/// Every record of the gateway's default trail, parsed.
async fn trail(gw: &TestGateway) -> Vec<serde_json::Value> {
    gw.trail().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_user_is_recorded_beside_the_subject_and_can_be_required_to_match() {
    // By default a token for alice presented as user=bob gets in as alice, and the trail keeps
    // the name the client sent beside the subject.
    let gw = TestGateway::start().await;
    let (client, conn) = common::bounded_login(
        "alice's token as bob",
        gw.pg_config("bob", &gw.token("alice"))
            .connect(tokio_postgres::NoTls),
    )
    .await
    .expect("the user name is not checked by default");
    tokio::spawn(conn);
    client.query_one("select 1", &[]).await.expect("query");
    drop(client);
    let records = trail(&gw).await;
    let opened: Vec<_> = records
        .iter()
        .filter(|p| p["event"] == "session_opened")
        .collect();
    assert_eq!(opened.len(), 1, "{records:#?}");
    assert_eq!(opened[0]["subject"], "alice");
    assert_eq!(opened[0]["user"], "bob");
    gw.shutdown().await;

    // With `require_user_match`, the same login is refused naming both, and recorded as a failed
    // login; alice as alice still gets in.
    let gw = TestGateway::start_with(Options {
        postgres_extra: "require_user_match = true".into(),
        ..Options::default()
    })
    .await;
    let token = gw.token("alice");
    let result = common::bounded_login(
        "alice's token as bob, matching required",
        gw.pg_config("bob", &token).connect(tokio_postgres::NoTls),
    )
    .await
    .map(|(client, _)| client);
    assert_refused(
        "user bob, subject alice",
        result,
        "28000",
        "user name \"bob\"",
        &[&gw.secret, &token],
    );
    let e = gw
        .pg_config("bob", &token)
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused again");
    let db = e.as_db_error().expect("server error");
    assert!(db.message().contains("\"alice\""), "{}", db.message());
    assert!(
        db.hint().is_some_and(|h| h.contains("user=alice")),
        "{:?}",
        db.hint()
    );
    let client = gw.connect_tokio_postgres(&token).await;
    client.query_one("select 1", &[]).await.expect("query");
    drop(client);
    let records = trail(&gw).await;
    let failed: Vec<_> = records
        .iter()
        .filter(|p| p["event"] == "login_failed")
        .collect();
    assert_eq!(failed.len(), 2, "{records:#?}");
    assert_eq!(failed[0]["user"], "bob");
    assert_eq!(failed[0]["kind"], "access_denied");
    assert!(
        failed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("bob") && r.contains("alice")),
        "{:?}",
        failed[0]
    );
    let opened: Vec<_> = records
        .iter()
        .filter(|p| p["event"] == "session_opened")
        .collect();
    assert_eq!(opened.len(), 1, "{records:#?}");
    assert_eq!(
        (&opened[0]["subject"], &opened[0]["user"]),
        (&json!("alice"), &json!("alice"))
    );
    gw.shutdown().await;
}
