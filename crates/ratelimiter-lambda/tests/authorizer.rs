//! The default `$connect` authorizer: tokens signed with a key generated
//! for these tests only, a JWKS served on loopback, and API Gateway's
//! authorizer events.

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::iam::IamPolicyEffect;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ratelimiter_lambda::authorizer::{Authorizer, Jwks, TokenError, Verifier};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};

/// A 2048-bit RSA key (PKCS#1 DER, base64), made for these tests and used nowhere else.
const TEST_KEY: &str = "MIIEowIBAAKCAQEAvyGV40+hQ/BmhMp7TEVDc+nmJrlzjHKrAbC8S0B/0aODKeKQdzehXYfQ17bI2vw6Fz6W4LxyBvSqg1P5TW5cG4DyljAv2uU5jvnOEtCUz453ZEnq0RIjn12zaUoJtu7v7vXG2siITYb2nopHxmYtGRCzuysYMl7Ig9Vd/VNJlkArOt0CBfs/UP3JXWHrgXITWSEYQwYeIdK4S6J827x8nNVPt6NCcGYEmc0FhzMHuDuH/C88nDAZAgOVZXEaUilanBrOY14mkx0na6dhiceGdwug06JHyFPmtw1NRq+thqLNPdyhi8tvrpB5k6d+MHlJidvA1rDJOfcA/xyr4N64/QIDAQABAoIBAAGPDhBlCV0q/EMP/bJxDCxJV5GwSIN4OfHRFbANbh1xFnREf0Yho4TGQ0tHF9tFXFntLkDV+J4a57sbd7iMcl7dDd1wtis0XGRQoEAiCFyq/klImwwqeDToCDsPGgYua7GIup71LLtpIuDHIu+4zJxcOQMJRnC+uibtGg+jWsHJb4tPYvANLpcodIXEiI7XpyMHegvbVyc9nRrZwS+m4IkuSkAPUVxbyxBBkHgK+brauW7jOK4vWAvDaSLyXWrveBGPNlkGxCfqfr2xrCeXvYOSoU7g/1nYN38mwYsOSdJbDlHUhmxKEptCqC/Fe97d5duAUauxS1eQmsLCWEj7ZmECgYEA/+kBKypwcCwc+Jo7QL3PDrim7k9itmkLhHflBSz0zbvmt4IzlzI6pqEQ2QQ3Qij50T90wHSkFmzZkE+oz7vDyTSMzKOc8oR/E0FTgu822S8VqvPouL4RGgC7TvYTAan9Qoee9AVZ0z+Hxh41qOKNWuGUhv8cDUnzvJ2AFYofOG0CgYEAvzLCk1ri3k7DwJxUQEG9XtJ5K3fiJKEufZpVRx0l8mIX0UalWX87sFPqC6bueEpPOeqiQ+wlKgt8cpgOhdVu59d+uY1o/SE5bHEDt6598lb6kUolNoJyDW8TKFA2tpG/zNyhqFh3aIwft1MeMCMqkU9ZGrRlD9JX4r2FGO+vSNECgYAyBk83K+2cz9K9+hA5IKF4JDplfVkzhSc+Nt2q/FXCXcfE+YuyM5xpdDTB52QR58al07yz3lkxFQgWgKvkJ7UnAMHBQv5sHeBlWDDF+JMFM4INz+4fJvBa3+e9kLa4bY1XUwGMe/tKIzIcVU1x/Q9aw5vwI7BNHLarmTIvg7eEpQKBgA6l9+xMMUdw52RxVa8amkSSgYAIDkZaJvKuiUwKeqbIRyTccbyal9sZgrvjzS9gGhPI2yezBuHiwWUSK0KrqHSQuP/ESr/h9MFPI0bGUpXnfgj1kkZL1isbUG9tPdPc9MHgQW5hYLycx61G6/AqMY+ycZQvL/L3XY5ckL7pVheRAoGBAOzl+OjHKhyioH7cchP5XT1zIABOrwe2oZGiqS2ja7KqmtTjKR5yHFqsyn9K2L4QbSU1rlgELtyKk0WaqHCwnyhBzTLHCNE8iAGwY+OoYGo8nsRz7mGeCBjkCpBVdUXUcs8lQVrlhxW9ocruiFw4XWFZ+vwJjFlwpwz0DvTIhwWv";

const NOW: u64 = 1_800_000_000;

fn key() -> RsaKeyPair {
    RsaKeyPair::from_der(&STANDARD.decode(TEST_KEY).unwrap()).unwrap()
}

/// The JWKS document of the test key, under `kid`.
fn jwks_json(kid: &str) -> String {
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(key().public());
    json!({"keys": [
        {"kty": "EC", "kid": "other", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
         "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e)}
    ]})
    .to_string()
}

/// A token with `header` and `claims`, signed by the test key.
fn token_with(header: Value, claims: Value) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = key();
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn token(claims: Value) -> String {
    token_with(json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}), claims)
}

fn verifier() -> Verifier {
    Verifier::new(
        Jwks::parse(&jwks_json("k1")).unwrap(),
        Some("https://issuer.example".into()),
        Some("ws-api".into()),
        "tier".into(),
    )
}

fn good_claims() -> Value {
    json!({"sub": "user-42", "iss": "https://issuer.example", "aud": ["other", "ws-api"],
           "exp": NOW + 60, "nbf": NOW - 60, "tier": "pro"})
}

#[test]
fn a_valid_token_gives_its_subject_and_tier() {
    let identity = verifier().verify(&token(good_claims()), NOW).unwrap();
    assert_eq!(identity.user_id, "user-42");
    assert_eq!(identity.tier.as_deref(), Some("pro"));
}

#[test]
fn every_flaw_of_a_token_is_refused() {
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good_claims();
        change(&mut claims);
        verifier().verify(&token(claims), NOW).unwrap_err()
    };
    assert_eq!(with(&|c| c["exp"] = json!(NOW)), TokenError::Expired);
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        TokenError::Expired
    );
    assert_eq!(
        with(&|c| c["nbf"] = json!(NOW + 5)),
        TokenError::NotYetValid
    );
    assert_eq!(
        with(&|c| c["iss"] = json!("https://evil.example")),
        TokenError::WrongParty
    );
    assert_eq!(
        with(&|c| c["aud"] = json!("someone-else")),
        TokenError::WrongParty
    );
    assert_eq!(with(&|c| c["sub"] = json!("")), TokenError::NoSubject);
    // A payload changed after signing.
    let good = token(good_claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_claims =
        URL_SAFE_NO_PAD.encode(json!({"sub": "admin", "exp": NOW + 60}).to_string());
    parts[1] = &forged_claims;
    assert_eq!(
        verifier().verify(&parts.join("."), NOW).unwrap_err(),
        TokenError::Signature
    );
    // Unsigned, or with a key the JWKS does not have, or not a token at all.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
        URL_SAFE_NO_PAD.encode(good_claims().to_string())
    );
    assert_eq!(
        verifier().verify(&none, NOW).unwrap_err(),
        TokenError::Algorithm
    );
    let other_kid = token_with(json!({"alg": "RS256", "kid": "k2"}), good_claims());
    assert_eq!(
        verifier().verify(&other_kid, NOW).unwrap_err(),
        TokenError::UnknownKey
    );
    for junk in ["", "a.b", "a.b.c.d", "!!.??.**"] {
        assert_eq!(
            verifier().verify(junk, NOW).unwrap_err(),
            TokenError::Malformed,
            "{junk}"
        );
    }
}

fn request(
    query: Option<&str>,
    header: Option<&str>,
) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut event = json!({
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc123/prod/$connect",
        "headers": {},
        "queryStringParameters": {},
        "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "c1="}
    });
    if let Some(token) = query {
        event["queryStringParameters"]["token"] = json!(token);
    }
    if let Some(value) = header {
        event["headers"]["Authorization"] = json!(value);
    }
    serde_json::from_value(event).unwrap()
}

fn effect(response: &ApiGatewayCustomAuthorizerResponse) -> IamPolicyEffect {
    response.policy_document.statement[0].effect.clone()
}

/// Serves the test key's JWKS on loopback, as an identity provider would;
/// returns its URL.
async fn serve_jwks() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let body = jwks_json("k1");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    url
}

#[tokio::test]
async fn anonymous_listeners_and_verified_speakers_come_in_bad_tokens_do_not() {
    // The identity provider's JWKS, on loopback.
    let url = serve_jwks().await;
    let authorizer = Authorizer::from_jwks_url(
        &url,
        Some("https://issuer.example".into()),
        Some("ws-api".into()),
        "plan".into(),
    )
    .await
    .unwrap();

    let anonymous = authorizer.authorize(&request(None, None), NOW);
    assert_eq!(effect(&anonymous), IamPolicyEffect::Allow);
    assert!(
        anonymous.context.get("userId").is_none(),
        "{:?}",
        anonymous.context
    );
    assert_eq!(
        anonymous.policy_document.statement[0].resource[0],
        "arn:aws:execute-api:us-east-1:123456789012:abc123/prod/$connect"
    );

    let speaker = authorizer.authorize(&request(Some(&token(good_claims())), None), NOW);
    assert_eq!(effect(&speaker), IamPolicyEffect::Allow);
    assert_eq!(speaker.context["userId"], "user-42");
    assert_eq!(speaker.principal_id.as_deref(), Some("user-42"));
    let bearer = authorizer.authorize(
        &request(None, Some(&format!("Bearer {}", token(good_claims())))),
        NOW,
    );
    assert_eq!(bearer.context["userId"], "user-42");

    let mut expired = good_claims();
    expired["exp"] = json!(NOW - 1);
    let refused = authorizer.authorize(&request(Some(&token(expired)), None), NOW);
    assert_eq!(effect(&refused), IamPolicyEffect::Deny);
    assert!(refused.context.get("userId").is_none());

    // A JWKS that cannot be fetched stops the function at start-up.
    let error = Authorizer::from_jwks_url("http://127.0.0.1:9/jwks", None, None, "tier".into())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot fetch"), "{error}");
}

#[tokio::test]
async fn the_tier_field_is_the_one_the_handlers_read() {
    use ratelimiter::{Builder, Config};
    use ratelimiter_lambda::event::authorizer_field;

    let url = serve_jwks().await;
    let dir = std::env::temp_dir().join(format!("ratelimiter-authorizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    std::fs::write(&file, "tier_field = \"plan\"\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    // The variables as the template gives them to the authorizer function
    // (an empty issuer and audience, no key secret), plus a policies file.
    let lookup = |extra: &'static [(&'static str, &'static str)]| {
        let (url, file) = (url.clone(), file.clone());
        move |var: &str| match var {
            "RATE_LIMIT_JWKS_URL" => Some(url.clone()),
            "RATE_LIMIT_CONFIG" => Some(file.clone()),
            "RATE_LIMIT_JWT_ISSUER" | "RATE_LIMIT_JWT_AUDIENCE" => Some(String::new()),
            _ => extra
                .iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| (*value).to_owned()),
        }
    };
    // Both claims, so that which one is read shows.
    let mut claims = good_claims();
    claims["plan"] = json!("gold");
    let token = token(claims);

    // The file's `tier_field` names both the claim and the context field.
    let authorizer = Authorizer::from_lookup(lookup(&[])).await.unwrap();
    let speaker = authorizer.authorize(&request(Some(&token), None), NOW);
    assert_eq!(effect(&speaker), IamPolicyEffect::Allow);
    assert_eq!(speaker.context["plan"], "gold", "{:?}", speaker.context);
    assert!(
        speaker.context.get("tier").is_none(),
        "{:?}",
        speaker.context
    );
    // A handler on the same configuration finds the tier in that context.
    let limiter = Builder::from_config(Config::from_lookup(lookup(&[])).unwrap()).in_memory();
    assert_eq!(limiter.tier_field(), "plan");
    let event = json!({"requestContext": {
        "routeKey": "$connect", "eventType": "CONNECT", "stage": "prod",
        "connectedAt": 1_699_500_123_456i64, "requestTimeEpoch": 1_699_500_123_456i64,
        "identity": {"sourceIp": "203.0.113.10"}, "requestId": "r", "connectionId": "c1=",
        "apiId": "abc123", "authorizer": speaker.context.clone()
    }});
    let event = serde_json::from_value(event).unwrap();
    assert_eq!(
        authorizer_field(&event, limiter.tier_field()).as_deref(),
        Some("gold")
    );

    // The variable wins over the file, for the authorizer as for the handlers.
    let authorizer = Authorizer::from_lookup(lookup(&[("RATE_LIMIT_TIER_FIELD", "tier")]))
        .await
        .unwrap();
    let speaker = authorizer.authorize(&request(Some(&token), None), NOW);
    assert_eq!(speaker.context["tier"], "pro", "{:?}", speaker.context);
    assert!(
        speaker.context.get("plan").is_none(),
        "{:?}",
        speaker.context
    );

    // A wrong file stops the authorizer at start-up with the core's message.
    std::fs::write(&file, "tier_field = \"\"\n").unwrap();
    let expected = Config::from_lookup(lookup(&[])).unwrap_err().to_string();
    let error = Authorizer::from_lookup(lookup(&[]))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(error, expected);
    assert!(
        error.starts_with(&format!("{file}:1: tier_field must be")),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
