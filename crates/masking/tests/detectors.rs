//! Detector precision and recall on realistic text: positives embedded in sentences, logs, JSON
//! and CSV lines must all be found (exactly: the span is the thing, not more, not less), and
//! negatives that look like personal data but are not must find nothing. Then redaction: JSON
//! stays valid, escapes are never cut, unchanged values come back borrowed.
//!
//! `cargo test -p masking --test detectors -- --nocapture` prints the table per detector.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gateway_core::{ValueFormat, ValueType};
use masking::detect::{detector_mask, DetectorKind, Detectors};

use DetectorKind::{Card, Email, Iban, Jwt, Phone, PrivateKey, Secret, Ssn};

fn jwt(header: &str, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        signature
    )
}

const JWT_HS256: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

const RSA_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi/lFOQiD2mZ7hNPMCxlGeFVkxs\n2ml0q7hXhVkNCLYEFGjxbW7wnSGzAuF0MbNHg1Z0D3vYY4MTsOKNZc2pRQQ+vT0a\nAwIDAQABAoIBAQCxCbLtj1C6sEsBlz0F3aiNnGKpQD8rEIzCRw==\n-----END RSA PRIVATE KEY-----";

const OPENSSH_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDk3VXyV5fFh4cTAbA4Zm9vYmFy\n-----END OPENSSH PRIVATE KEY-----";

/// One sample text and what must be found in it: (kind, the exact text of the finding).
struct Sample {
    text: String,
    expect: Vec<(DetectorKind, String)>,
}

fn s(text: impl Into<String>, expect: &[(DetectorKind, &str)]) -> Sample {
    Sample {
        text: text.into(),
        expect: expect.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    }
}

fn positives() -> Vec<Sample> {
    let pkcs8_json_escaped = "-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2\\nOF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r\\n-----END PRIVATE KEY-----";
    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQIxE8x1e5PBu4CAggA\n-----END ENCRYPTED PRIVATE KEY-----";
    let ec = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n-----END EC PRIVATE KEY-----";
    let truncated =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAvRKXmE3NUTCM1HXc0wBlz9Vr5tNQFhGeFmqH";
    let rs256 = jwt(
        r#"{"alg":"RS256","kid":"k1"}"#,
        r#"{"sub":"42","exp":1893456000}"#,
        "c2lnbmF0dXJlLWJ5dGVz",
    );
    let spaced_header = jwt(
        "{ \"alg\": \"ES256\" }",
        r#"{"iss":"https://id.example.com"}"#,
        "",
    );
    let github_pat = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd";
    vec![
        // --- email
        s("Please contact jane.doe@example.com for details.", &[(Email, "jane.doe@example.com")]),
        s("From: \"J. Smith\" <j.smith+billing@mail.example.co.uk>", &[(Email, "j.smith+billing@mail.example.co.uk")]),
        s("42,Jane,Doe,jane_doe99@example.org,2024-01-15", &[(Email, "jane_doe99@example.org")]),
        s(r#"{"user": {"email": "Support-Team@Sub.Example.IO"}}"#, &[(Email, "Support-Team@Sub.Example.IO")]),
        s(r#"{"note": "line one\njohn@example.net"}"#, &[(Email, "john@example.net")]),
        s("2024-01-15T10:30:00Z INFO login ok user=ops@example.com ip=10.0.0.7", &[(Email, "ops@example.com")]),
        s("mailto:o.brien@example.ie?subject=hi", &[(Email, "o.brien@example.ie")]),
        s("Send it to x@y.travel.", &[(Email, "x@y.travel")]),
        // --- card
        s("Card on file: 4111 1111 1111 1111 exp 12/27", &[(Card, "4111 1111 1111 1111")]),
        s("charge failed for card 5555-5555-5555-4444 (insufficient funds)", &[(Card, "5555-5555-5555-4444")]),
        s("7,Amex,378282246310005,USD", &[(Card, "378282246310005")]),
        s(r#"{"pan": "6011111111111117", "brand": "discover"}"#, &[(Card, "6011111111111117")]),
        s(r#"{"pan": 4012888888881881}"#, &[(Card, "4012888888881881")]),
        s("JCB 3530111333300000 and Diners 3056 930902 5904 accepted", &[(Card, "3530111333300000"), (Card, "3056 930902 5904")]),
        s("Mastercard 2223003122003222 on order 17", &[(Card, "2223003122003222")]),
        s("old Visa 4222222222222", &[(Card, "4222222222222")]),
        s("UnionPay: 6200000000000005.", &[(Card, "6200000000000005")]),
        s("amex 3782 822463 10005 declined", &[(Card, "3782 822463 10005")]),
        // --- ssn
        s("SSN: 123-45-6789", &[(Ssn, "123-45-6789")]),
        s("applicant,457-55-5462,approved", &[(Ssn, "457-55-5462")]),
        s(r#"{"ssn": "219-09-9999"}"#, &[(Ssn, "219-09-9999")]),
        s("Employee 536-22-1234 was hired on 2023-03-01.", &[(Ssn, "536-22-1234")]),
        s(r#"{"text": "ssn\t078-05-1120"}"#, &[(Ssn, "078-05-1120")]),
        // --- iban
        s("Please transfer to DE89 3704 0044 0532 0130 00 by Friday.", &[(Iban, "DE89 3704 0044 0532 0130 00")]),
        s("IBAN GB82WEST12345698765432", &[(Iban, "GB82WEST12345698765432")]),
        s(r#"{"iban": "FR1420041010050500013M02606"}"#, &[(Iban, "FR1420041010050500013M02606")]),
        s("supplier;ES9121000418450200051332;EUR", &[(Iban, "ES9121000418450200051332")]),
        s("IT60 X054 2811 1010 0000 0123 456 (Milano)", &[(Iban, "IT60 X054 2811 1010 0000 0123 456")]),
        s("NL91ABNA0417164300", &[(Iban, "NL91ABNA0417164300")]),
        s("BE68 5390 0754 7034, CH93 0076 2011 6238 5295 7", &[(Iban, "BE68 5390 0754 7034"), (Iban, "CH93 0076 2011 6238 5295 7")]),
        s("AT611904300234573201 / IE29AIBK93115212345678", &[(Iban, "AT611904300234573201"), (Iban, "IE29AIBK93115212345678")]),
        s("PL61 1090 1014 0000 0712 1981 2874", &[(Iban, "PL61 1090 1014 0000 0712 1981 2874")]),
        s("SE4550000000058398257466 DK5000400440116243 NO9386011117947", &[(Iban, "SE4550000000058398257466"), (Iban, "DK5000400440116243"), (Iban, "NO9386011117947")]),
        s("FI2112345600000785, PT50000201231234567890154, LU280019400644750000", &[(Iban, "FI2112345600000785"), (Iban, "PT50000201231234567890154"), (Iban, "LU280019400644750000")]),
        // --- phone
        s("Call me at +1 415 555 2671 tomorrow", &[(Phone, "+1 415 555 2671")]),
        s("London office: +44 20 7946 0958.", &[(Phone, "+44 20 7946 0958")]),
        s(r#"{"phone": "+49-30-901820-0"}"#, &[(Phone, "+49-30-901820-0")]),
        s("Tel. +33 1 42 68 53 00 (Paris)", &[(Phone, "+33 1 42 68 53 00")]),
        s("support line (415) 555-2671, weekdays", &[(Phone, "(415) 555-2671")]),
        s("5,Bob,415-555-2671,CA", &[(Phone, "415-555-2671")]),
        s("toll free 1-800-555-0199", &[(Phone, "1-800-555-0199")]),
        s("+1 (212) 555-0123 ext. 4", &[(Phone, "+1 (212) 555-0123")]),
        s("Tokyo +81 3-1234-5678", &[(Phone, "+81 3-1234-5678")]),
        s("fax: 212.555.0147", &[(Phone, "212.555.0147")]),
        // --- secret
        s("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", &[(Secret, "AKIAIOSFODNN7EXAMPLE")]),
        s("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &[(Secret, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]),
        s(r#"{"AccessKeyId": "ASIAY34FZKBOKMUTVV7A", "note": "temporary"}"#, &[(Secret, "ASIAY34FZKBOKMUTVV7A")]),
        s("git push with token ghp_16C7e42F292c6912E7710c838347Ae178B4a", &[(Secret, "ghp_16C7e42F292c6912E7710c838347Ae178B4a")]),
        s(format!("GITHUB_TOKEN={github_pat}"), &[(Secret, github_pat)]),
        s("slack: xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", &[(Secret, "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx")]),
        s("stripe.api_key = \"sk_live_4eC39HqLyjWDarjtT1zdp7dc\"", &[(Secret, "sk_live_4eC39HqLyjWDarjtT1zdp7dc")]),
        s("maps key AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI in config", &[(Secret, "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI")]),
        s("login attempt password=hunter2! from 10.1.2.3", &[(Secret, "hunter2!")]),
        s(r#"{"user": "app", "api_key": "9f8e7d6c5b4a3210"}"#, &[(Secret, "9f8e7d6c5b4a3210")]),
        s("DB_PASSWORD=correct-horse-battery-staple", &[(Secret, "correct-horse-battery-staple")]),
        s("client_secret: abcDEF123456ghiJKL", &[(Secret, "abcDEF123456ghiJKL")]),
        s("GET /api HTTP/1.1\r\nAuthorization: Bearer abc123def456ghi789jkl\r\n", &[(Secret, "abc123def456ghi789jkl")]),
        s("dsn=postgres://app:s3cr3tpw@db.internal:5432/app", &[(Secret, "s3cr3tpw")]),
        s(r#"{"msg": "retry with password=\"p4ss w0rd\""}"#, &[(Secret, "p4ss w0rd")]),
        // --- jwt
        s(format!("token={JWT_HS256}; Path=/"), &[(Jwt, JWT_HS256)]),
        s(format!(r#"{{"id_token": "{rs256}"}}"#), &[(Jwt, rs256.as_str())]),
        s(format!("Authorization: Bearer {JWT_HS256}"), &[(Secret, JWT_HS256)]),
        s(format!("unsecured {spaced_header} accepted"), &[(Jwt, spaced_header.as_str())]),
        s(format!("2024-01-15 12:00:01 WARN expired jwt {rs256}"), &[(Jwt, rs256.as_str())]),
        // --- private key
        s(format!("key file:\n{RSA_KEY}\n-- end of paste"), &[(PrivateKey, RSA_KEY)]),
        s(format!(r#"{{"private_key": "{pkcs8_json_escaped}", "client_email": "x@proj.iam.example.com"}}"#),
          &[(PrivateKey, pkcs8_json_escaped), (Email, "x@proj.iam.example.com")]),
        s(OPENSSH_KEY, &[(PrivateKey, OPENSSH_KEY)]),
        s(format!("{encrypted}\n"), &[(PrivateKey, encrypted)]),
        s(format!("ec key {ec} rotated"), &[(PrivateKey, ec)]),
        s(format!("{truncated}\"}}"), &[(PrivateKey, truncated)]),
        // --- several kinds at once
        s("Jane Doe,jane@example.com,+44 20 7946 0958,GB82 WEST 1234 5698 7654 32,4111111111111111",
          &[(Email, "jane@example.com"), (Phone, "+44 20 7946 0958"), (Iban, "GB82 WEST 1234 5698 7654 32"), (Card, "4111111111111111")]),
    ]
}

fn negatives() -> Vec<&'static str> {
    vec![
        // Card-length numbers that are not cards.
        "Order 4111111111111112 shipped",
        "order number 1234567812345678 confirmed",
        "created_at_ms=1705312345678",
        "ts_us 1705312345678901",
        "trace 20240115103000123 done",
        "account 4111 1111 1111 1111 2222 (20-digit reference)",
        "amount 4111111111111111.50 settled",
        "scores: 4 5 3 2 1 0 9 8 7 6 5 4 3 2",
        "ISBN 978-3-16-148410-0",
        "ISBN 0-306-40615-2 and 9780306406157",
        "id 5105105105105106 (test)",
        "serial 3530111333300001",
        // Identifiers.
        "request 550e8400-e29b-41d4-a716-446655440000 completed",
        "uuid=123e4567-e89b-12d3-a456-426614174000",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b by ci",
        "short sha a94a8fe, tag v1.2.3",
        "version 1.2.3.4 released",
        "v10.4.1-rc.2 and 2024.01.15 builds",
        "host 192.168.100.200 port 5432",
        "netmask 255.255.255.0 gateway 10.0.0.1",
        "date 2024-01-15, due 15/01/2024, at 2024-01-15T10:30:00Z",
        "Invoice INV-2024-000123 total 1,234,567.89",
        // SSN-shaped.
        "ref 123-45-678",
        "code 000-12-3456",
        "code 666-12-3456",
        "code 900-12-3456",
        "code 123-00-4567",
        "code 123-45-0000",
        "batch 2024-123-45-6789-77",
        // IBAN-shaped.
        "DE89 3704 0044 0532 0130 01",
        "GB82 WEST 1234 5698 7654 33",
        "XX12 3456 7890 1234 5678 90",
        "model AB12 CD34 EF56 GH78",
        // Phone-shaped.
        "part no. 123-456-7890",
        "Part 012-345-6789",
        "PN-415-555-2671-B",
        "ID 987654321 and 4155552671",
        "math 1+2345678901",
        "timezone +0530 and +01:00",
        "Avogadro 6.02214076e+23",
        "coords +48.8566, +2.3522",
        "build 415.555.2671.3",
        "price $555-555-5555",
        // JWT-shaped.
        "eyJmb28iOiJiYXIifQ.eyJiYXoiOjF9.c2lnbmF0dXJl",
        "payload dGhpcyBpcyBub3QgYSBqd3Q= end",
        "YWJjZGVm.Z2hpamts.bW5vcA",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
        // Public PEM blocks.
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2hlY2sgdGhpcyBpcyBub3QgYSBrZXk=\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        // E-mail-shaped.
        "ssh user@localhost",
        "a@b",
        "assets/icon@2x.png",
        "thanks @mention and lodash@4.17.21",
        "foo@bar is not an address",
        // Secret-shaped.
        "AKIA1234 is too short",
        "password reset requested for account 42",
        "password: ********",
        "password=",
        "api_key=${API_KEY}",
        r#"{"password": null, "secret": true}"#,
        "UPDATE users SET password = $1 WHERE id = $2",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "ghp_short and xoxo hugs",
        "the bearer of this letter",
        "password=[secret] already masked",
        "connect to postgres://db.internal:5432/app",
    ]
}

/// Counts per detector.
#[derive(Default)]
struct Score {
    true_positives: usize,
    false_negatives: usize,
    false_positives: usize,
}

#[test]
fn precision_and_recall() {
    let detectors = Detectors::all();
    let positives = positives();
    let negatives = negatives();
    assert!(positives.len() >= 60, "{} positives", positives.len());
    assert!(negatives.len() >= 60, "{} negatives", negatives.len());
    let mut scores: BTreeMap<DetectorKind, Score> = DetectorKind::all()
        .iter()
        .map(|&k| (k, Score::default()))
        .collect();
    let mut failures = Vec::new();
    for sample in &positives {
        let findings = detectors.find(&sample.text);
        let mut found: Vec<(DetectorKind, &str)> = findings
            .iter()
            .map(|f| (f.kind, &sample.text[f.range.clone()]))
            .collect();
        for (kind, expected) in &sample.expect {
            if let Some(i) = found.iter().position(|(k, v)| k == kind && v == expected) {
                found.remove(i);
                scores.get_mut(kind).unwrap().true_positives += 1;
            } else {
                scores.get_mut(kind).unwrap().false_negatives += 1;
                failures.push(format!(
                    "missed {kind:?} {expected:?} in {:?}; found {found:?}",
                    sample.text
                ));
            }
        }
        for (kind, value) in found {
            scores.get_mut(&kind).unwrap().false_positives += 1;
            failures.push(format!(
                "unexpected {kind:?} {value:?} in {:?}",
                sample.text
            ));
        }
    }
    for text in &negatives {
        for finding in detectors.find(text) {
            scores.get_mut(&finding.kind).unwrap().false_positives += 1;
            failures.push(format!(
                "false positive {:?} {:?} in {text:?}",
                finding.kind, &text[finding.range]
            ));
        }
    }
    println!(
        "{:<12} {:>4} {:>4} {:>4} {:>9} {:>7}",
        "detector", "tp", "fn", "fp", "precision", "recall"
    );
    for (kind, score) in &scores {
        let precision = score.true_positives as f64
            / (score.true_positives + score.false_positives).max(1) as f64;
        let recall = score.true_positives as f64
            / (score.true_positives + score.false_negatives).max(1) as f64;
        println!(
            "{:<12} {:>4} {:>4} {:>4} {:>8.1}% {:>6.1}%",
            kind.name(),
            score.true_positives,
            score.false_negatives,
            score.false_positives,
            precision * 100.0,
            recall * 100.0
        );
    }
    println!(
        "{} positive samples, {} negative samples",
        positives.len(),
        negatives.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn classify_takes_whole_values_only() {
    let detectors = Detectors::all();
    let rows: &[(&str, Option<DetectorKind>, &str)] = &[
        ("jane.doe@example.com", Some(Email), "an address"),
        (
            "  jane.doe@example.com\n",
            Some(Email),
            "surrounding whitespace ignored",
        ),
        ("4111 1111 1111 1111", Some(Card), "a card number"),
        ("123-45-6789", Some(Ssn), "an SSN"),
        ("DE89370400440532013000", Some(Iban), "an IBAN"),
        ("+44 20 7946 0958", Some(Phone), "a phone number"),
        ("AKIAIOSFODNN7EXAMPLE", Some(Secret), "an AWS key id"),
        (JWT_HS256, Some(Jwt), "a JWT"),
        (RSA_KEY, Some(PrivateKey), "a private key"),
        (
            "write to jane.doe@example.com",
            None,
            "a sentence that contains one",
        ),
        ("jane@example.com, joe@example.com", None, "two of them"),
        ("4111111111111112", None, "fails Luhn"),
        ("", None, "empty"),
        ("hello", None, "nothing"),
    ];
    for (value, expected, why) in rows {
        assert_eq!(detectors.classify(value), *expected, "{why}: {value:?}");
    }
}

#[test]
fn a_subset_finds_only_its_kinds() {
    let detectors = Detectors::new(&[Ssn, Email, Email]);
    assert_eq!(detectors.kinds(), &[Email, Ssn]);
    let text = "jane@example.com 123-45-6789 4111111111111111 AKIAIOSFODNN7EXAMPLE";
    let kinds: Vec<DetectorKind> = detectors.find(text).iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Email, Ssn]);
    assert_eq!(
        detectors.redact(text),
        "[email] [ssn] 4111111111111111 AKIAIOSFODNN7EXAMPLE"
    );
    assert!(Detectors::new(&[]).find(text).is_empty());
}

#[test]
fn redaction_replaces_findings_and_borrows_clean_text() {
    let detectors = Detectors::all();
    let clean = "Nothing to see here: order 42 shipped on 2024-01-15.";
    assert!(matches!(detectors.redact(clean), Cow::Borrowed(_)));
    assert_eq!(
        detectors.redact("mail jane@example.com or call +1 415 555 2671; card 4111 1111 1111 1111"),
        "mail [email] or call [phone]; card [card]"
    );
    // Redacting twice changes nothing more.
    for sample in positives() {
        let once = detectors.redact(&sample.text).into_owned();
        assert_eq!(detectors.redact(&once), once, "{:?}", sample.text);
        for (_, secret) in &sample.expect {
            assert!(
                !once.contains(secret.as_str()),
                "{secret:?} left in {once:?}"
            );
        }
    }
}

/// Each kind's sample as it would sit in JSON: its text as a JSON string (escaped as serde_json
/// escapes it: a PEM's line breaks become `\n`).
fn json_samples() -> Vec<(DetectorKind, String)> {
    vec![
        (Email, "jane.doe@example.com".into()),
        (Card, "4111 1111 1111 1111".into()),
        (Ssn, "123-45-6789".into()),
        (Iban, "DE89 3704 0044 0532 0130 00".into()),
        (Phone, "+1 (415) 555-2671".into()),
        (Secret, "ghp_16C7e42F292c6912E7710c838347Ae178B4a".into()),
        (Jwt, JWT_HS256.into()),
        (PrivateKey, RSA_KEY.into()),
    ]
}

#[test]
fn redacted_json_stays_valid_for_every_kind_in_values_and_keys() {
    let detectors = Arc::new(Detectors::all());
    let masks = [
        (ValueType::Json, ValueFormat::Text),
        (ValueType::Json, ValueFormat::Binary),
        (ValueType::Jsonb, ValueFormat::Text),
        (ValueType::Jsonb, ValueFormat::Binary),
    ];
    for (kind, value) in json_samples() {
        let documents = [
            serde_json::json!({ "field": value }),
            serde_json::json!({ "note": format!("see:\n{value}\tthanks") }),
            serde_json::json!({ "quoted": format!("\"{value}\"") }),
            serde_json::json!([value, { "nested": [value] }]),
            serde_json::json!({ value.clone(): 1, "other": { value.clone(): value } }),
        ];
        for document in documents {
            for text in [
                document.to_string(),
                serde_json::to_string_pretty(&document).unwrap(),
            ] {
                let redacted = detectors.redact(&text);
                let parsed: serde_json::Value = serde_json::from_str(&redacted)
                    .unwrap_or_else(|e| panic!("{kind:?}: {e}: {redacted}"));
                let flat = parsed.to_string();
                assert!(flat.contains(kind.placeholder()), "{kind:?}: {flat}");
                assert!(!redacted.contains(value.as_str()), "{kind:?}: {redacted}");
                for (value_type, format) in masks {
                    let mask = detector_mask(detectors.clone(), value_type, format).unwrap();
                    let mut input = text.clone().into_bytes();
                    if (value_type, format) == (ValueType::Jsonb, ValueFormat::Binary) {
                        input.insert(0, 1);
                    }
                    let out = mask.mask(&input).expect("UTF-8 JSON is never NULL");
                    let json = if (value_type, format) == (ValueType::Jsonb, ValueFormat::Binary) {
                        assert_eq!(out[0], 1, "version byte kept");
                        &out[1..]
                    } else {
                        &out[..]
                    };
                    serde_json::from_slice::<serde_json::Value>(json)
                        .unwrap_or_else(|e| panic!("{kind:?} {value_type:?}/{format:?}: {e}"));
                }
            }
        }
    }
    // A card stored as a JSON number becomes a string placeholder, not a bare word.
    let out = detectors.redact_json(r#"{"pan": 4111111111111111, "n": 2}"#);
    assert_eq!(out, r#"{"pan": "[card]", "n": 2}"#);
}

#[test]
fn escapes_are_never_cut() {
    let detectors = Detectors::all();
    // A key spanning `\n` escapes is replaced whole; a match that starts right after an escape
    // keeps the escape.
    let text = r#"{"a": "x\njane@example.com\ty", "b": "\u00e9 123-45-6789\\"}"#;
    let out = detectors.redact(text);
    assert_eq!(out, r#"{"a": "x\n[email]\ty", "b": "\u00e9 [ssn]\\"}"#);
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
}

#[test]
fn detector_masks_scan_text_like_types_only() {
    let detectors = Arc::new(Detectors::all());
    for value_type in [
        ValueType::Int4,
        ValueType::Bytes,
        ValueType::Uuid,
        ValueType::Array,
        ValueType::Other,
    ] {
        for format in [ValueFormat::Text, ValueFormat::Binary] {
            assert!(
                detector_mask(detectors.clone(), value_type, format).is_none(),
                "{value_type:?}"
            );
        }
    }
    let text = detector_mask(detectors.clone(), ValueType::Text, ValueFormat::Binary).unwrap();
    let clean = b"nothing here";
    assert!(matches!(text.mask(clean), Some(Cow::Borrowed(v)) if v == clean));
    assert_eq!(
        text.mask(b"ssn 123-45-6789").as_deref(),
        Some(&b"ssn [ssn]"[..])
    );
    // Not UTF-8: cannot be checked, so never passed.
    assert_eq!(text.mask(&[0x66, 0xff, 0x66]), None);
    let jsonb = detector_mask(detectors, ValueType::Jsonb, ValueFormat::Binary).unwrap();
    assert!(matches!(jsonb.mask(b"\x01{}"), Some(Cow::Borrowed(_))));
    assert_eq!(jsonb.mask(b"\x02{}"), None, "unknown jsonb version");
    assert_eq!(jsonb.mask(b""), None);
}

/// A small deterministic generator: the same cases every run, no dependency.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Texts spliced from findings, pieces of findings, escapes, quotes, multi-byte characters and
/// separators: redaction never panics, replaces every finding, and keeps any JSON
/// document built from such strings valid (as values and as keys).
#[test]
fn spliced_texts_redact_safely() {
    let pieces = [
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "378282246310005",
        "123-45-6789",
        "DE89 3704 0044 0532 0130 00",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "password=hunter2",
        "password=\"a b\"",
        "Authorization: Bearer abcdef123456",
        "postgres://u:pw12345@h/db",
        JWT_HS256,
        RSA_KEY,
        "-----BEGIN PRIVATE KEY-----\nMIIE",
        "\\",
        "\\n",
        "\\u00e9",
        "\"",
        "'",
        "é",
        "日本",
        "😀",
        " ",
        "\n",
        "\t",
        ",",
        "-",
        ".",
        "@",
        ":",
        "=",
        "{",
        "}",
        "[",
        "]",
        "x",
        "7",
        "2024-01-15",
    ];
    let detectors = Detectors::all();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..4000 {
        let mut text = String::new();
        for _ in 0..1 + rng.below(8) {
            let piece = pieces[rng.below(pieces.len())];
            let cut = if rng.below(3) == 0 {
                rng.below(piece.len() + 1)
            } else {
                piece.len()
            };
            let cut = (0..=cut)
                .rev()
                .find(|&i| piece.is_char_boundary(i))
                .unwrap_or(0);
            text.push_str(&piece[..cut]);
        }
        // Every finding goes, placeholders in its place. (Redacting again may find more: a
        // placeholder changes what surrounds its neighbours, as `KEY+44 20 7946 0958` is not a
        // phone number but `[secret]+44 20 7946 0958` is.)
        let findings = detectors.find(&text);
        let redacted = detectors.redact(&text);
        assert_eq!(findings.is_empty(), matches!(redacted, Cow::Borrowed(_)));
        for finding in &findings {
            assert!(
                redacted.contains(finding.kind.placeholder()),
                "{text:?} -> {redacted:?}"
            );
        }
        for document in [
            serde_json::json!({ "v": text }),
            serde_json::json!({ text.clone(): [text, 1] }),
        ] {
            let json = document.to_string();
            for out in [detectors.redact(&json), detectors.redact_json(&json)] {
                serde_json::from_str::<serde_json::Value>(&out)
                    .unwrap_or_else(|e| panic!("{e}: {json} -> {out}"));
            }
        }
    }
}

/// Long hostile values: each would take minutes if some candidate were re-scanned from every
/// position (quadratic time); they must take about as long as any text of their size. Nothing is
/// timed here (speed is measured in the benchmark): a quadratic case shows up as a test that
/// does not finish.
#[test]
fn long_hostile_values_are_scanned_in_linear_time() {
    const N: usize = 200_000;
    let texts = [
        format!("{}@example.com", "a".repeat(N)),
        format!("{}@{}.com", "a".repeat(N / 2), "b".repeat(N / 2)),
        format!("password={}", "x".repeat(N)),
        format!("password=\"{}", "x y ".repeat(N / 4)),
        format!("Authorization: Bearer {}", "a".repeat(N)),
        "-----BEGIN PRIVATE KEY-----!".repeat(N / 28),
        format!("{}jane@example.com", "\\".repeat(N)),
        "4111 ".repeat(N / 5),
        "415-555-".repeat(N / 8),
        "+1 ".repeat(N / 3),
        "DE89 ".repeat(N / 5),
        "eyJhbGciOiJub25lIn0.".repeat(N / 20),
        format!("eyJ{}.eyJ{}.", "A".repeat(N / 2), "B".repeat(N / 2)),
        "x://u:p@".repeat(N / 8),
        format!("https://{}:{}@", "u".repeat(N / 2), "p".repeat(N / 2)),
        "a@b.".repeat(N / 4),
        "\"password\": ".repeat(N / 12),
    ];
    let detectors = Detectors::all();
    for text in &texts {
        let t0 = std::time::Instant::now();
        let redacted = detectors.redact(text);
        eprintln!(
            "TIMING {:?} {:?}",
            &text[..20.min(text.len())],
            t0.elapsed()
        );
        let json = serde_json::json!({ "v": text }).to_string();
        let out = detectors.redact_json(&json);
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
        assert!(redacted.len() <= text.len() + 16 * detectors.find(text).len());
    }
}
