//! Crafted tokens: good, bad signature, expired, not yet valid, wrong issuer/audience, unknown
//! key, `alg: none`, garbage; RS256 (a fixed test key) and ES256 (generated).

use super::*;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A 2048-bit RSA key made for these tests only (ring cannot generate RSA keys).
const RSA_PKCS8: &[u8] = include_bytes!("testdata/rsa2048.pk8");

fn enc(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl Signer {
    fn rsa() -> Self {
        Signer::Rsa(RsaKeyPair::from_pkcs8(RSA_PKCS8).unwrap())
    }
    fn ec() -> Self {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Signer::Ec(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng).unwrap(),
        )
    }
    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        }
    }
    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Signer::Rsa(k) => {
                let p: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
                serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                    "n": enc(&p.n), "e": enc(&p.e)})
            }
            Signer::Ec(k) => {
                let pt = k.public_key().as_ref();
                serde_json::json!({"kty": "EC", "kid": kid, "crv": "P-256",
                    "x": enc(&pt[1..33]), "y": enc(&pt[33..65])})
            }
        }
    }
    fn sign(&self, kid: &str, claims: &serde_json::Value) -> String {
        let h = serde_json::json!({"alg": self.alg(), "typ": "JWT", "kid": kid});
        let msg = format!(
            "{}.{}",
            enc(h.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Signer::Rsa(k) => {
                let mut s = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg.as_bytes(), &mut s)
                    .unwrap();
                s
            }
            Signer::Ec(k) => k.sign(&rng, msg.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{msg}.{}", enc(&sig))
    }
}

const ISS: &str = "https://issuer.example";

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({"iss": ISS, "sub": "alice", "aud": ["api"],
        "exp": now_secs() + 600, "groups": ["admin", "dev"], "scope": "read write"});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn provider(jwks: &serde_json::Value, audiences: &[&str]) -> Arc<Provider> {
    let r = pb::JwtRule {
        name: "app/jwt[0]".into(),
        issuer: ISS.into(),
        audiences: audiences.iter().map(|s| s.to_string()).collect(),
        jwks: jwks.to_string(),
        ..Default::default()
    };
    Arc::new(Provider::compile(&r, &JwksRegistry::default()).unwrap())
}

fn run(p: &[Arc<Provider>], token: Option<&str>) -> Result<AuthnResult, JwtError> {
    let mut h = HeaderMap::new();
    if let Some(t) = token {
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(authenticate(p, &mut h, None));
    if r.is_ok() && token.is_some() {
        assert!(h.get("authorization").is_none(), "token forwarded");
    }
    r
}

#[test]
fn rs256_and_es256_tokens() {
    for s in [Signer::rsa(), Signer::ec()] {
        let p = [provider(
            &serde_json::json!({"keys": [s.jwk("k1")]}),
            &["api"],
        )];
        let ok = run(&p, Some(&s.sign("k1", &claims(serde_json::json!({}))))).unwrap();
        let c = ok.claims.unwrap();
        assert_eq!(c.principal, "https://issuer.example/alice");
        assert_eq!(c.claim(&["groups"]), ["admin", "dev"]);
        assert!(c.claim(&["scope"]).contains(&"write".to_string()));
        // No token: unauthenticated, not refused.
        assert!(run(&p, None).unwrap().claims.is_none());
        let bad =
            |extra: serde_json::Value| run(&p, Some(&s.sign("k1", &claims(extra)))).unwrap_err();
        assert_eq!(
            bad(serde_json::json!({"exp": now_secs() - 3600})),
            JwtError::Expired
        );
        assert_eq!(
            bad(serde_json::json!({"nbf": now_secs() + 3600})),
            JwtError::NotYetValid
        );
        assert_eq!(
            bad(serde_json::json!({"iss": "https://other"})),
            JwtError::UnknownIssuer
        );
        assert_eq!(bad(serde_json::json!({"aud": "web"})), JwtError::Audience);
        // Signed by another key with the same kid.
        let other = Signer::ec();
        let t = other.sign("k1", &claims(serde_json::json!({})));
        assert_eq!(run(&p, Some(&t)).unwrap_err(), JwtError::Signature);
        // Tampered payload.
        let good = s.sign("k1", &claims(serde_json::json!({})));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = enc(claims(serde_json::json!({"sub": "root"}))
            .to_string()
            .as_bytes());
        let t = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(run(&p, Some(&t)).unwrap_err(), JwtError::Signature);
    }
}

#[test]
fn hostile_tokens_are_refused_without_panics() {
    let s = Signer::ec();
    let p = [provider(&serde_json::json!({"keys": [s.jwk("k1")]}), &[])];
    let none = format!(
        "{}.{}.",
        enc(br#"{"alg":"none"}"#),
        enc(claims(serde_json::json!({})).to_string().as_bytes())
    );
    assert_eq!(run(&p, Some(&none)).unwrap_err(), JwtError::Algorithm);
    let none_sig = format!("{none}AAAA");
    assert_eq!(run(&p, Some(&none_sig)).unwrap_err(), JwtError::Algorithm);
    let hs = format!(
        "{}.{}.AAAA",
        enc(br#"{"alg":"HS256"}"#),
        enc(claims(serde_json::json!({})).to_string().as_bytes())
    );
    assert_eq!(run(&p, Some(&hs)).unwrap_err(), JwtError::Algorithm);
    for junk in [
        "x",
        "a.b",
        "a.b.c.d",
        "!!!.???.###",
        "e30.e30.e30",
        "W10.W10.AA",
    ] {
        assert!(run(&p, Some(junk)).is_err(), "{junk}");
    }
    // RS256 header against an EC key: no key of that type verifies it.
    let rsa = Signer::rsa();
    let t = rsa.sign("k1", &claims(serde_json::json!({})));
    assert_eq!(run(&p, Some(&t)).unwrap_err(), JwtError::Signature);
}

#[test]
fn jwks_parsing() {
    assert!(matches!(parse_jwks("nope"), Err(JwksError::Format(_))));
    assert!(matches!(
        parse_jwks(r#"{"keys": []}"#),
        Err(JwksError::NoKeys)
    ));
    assert!(matches!(
        parse_jwks(
            r#"{"keys": [{"kty": "oct", "k": "AAAA"}, {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#
        ),
        Err(JwksError::NoKeys)
    ));
    let s = Signer::ec();
    let keys =
        parse_jwks(&serde_json::json!({"keys": [s.jwk("a"), {"kty": "oct"}]}).to_string()).unwrap();
    assert_eq!(keys.len(), 1);
}

#[test]
fn custom_header_with_prefix_and_forwarding() {
    let s = Signer::ec();
    let r = pb::JwtRule {
        name: "r".into(),
        issuer: ISS.into(),
        jwks: serde_json::json!({"keys": [s.jwk("k")]}).to_string(),
        from_headers: vec![pb::JwtHeader {
            name: "x-jwt".into(),
            prefix: "Token ".into(),
        }],
        forward_original_token: true,
        ..Default::default()
    };
    let p = [Arc::new(
        Provider::compile(&r, &JwksRegistry::default()).unwrap(),
    )];
    let mut h = HeaderMap::new();
    let t = s.sign("k", &claims(serde_json::json!({})));
    h.insert("x-jwt", format!("Token {t}").parse().unwrap());
    // The default location is not read when fromHeaders is set.
    h.insert("authorization", "Bearer garbage".parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let res = rt.block_on(authenticate(&p, &mut h, None)).unwrap();
    assert!(res.claims.is_some());
    assert!(
        h.get("x-jwt").is_some(),
        "forwardOriginalToken keeps the header"
    );
}
