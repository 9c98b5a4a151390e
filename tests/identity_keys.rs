//! Signing keys end to end: `whosthat keygen`, `[oauth] signing_keys`, the
//! JWKS at `/.well-known/jwks.json` (read by the `jsonwebtoken` crate, kids
//! checked against its own RFC 7638 thumbprints), the metadata's `jwks_uri`,
//! and key rotation by reload: a token signed by a key verifies until that key
//! is removed, never after.

mod common;
mod identity_helpers;
mod oauth_helpers;

use common::reloading::*;
use common::*;
use identity_helpers::*;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use jsonwebtoken::jwk::{AlgorithmParameters, ThumbprintHash};

const BIN: &str = env!("CARGO_BIN_EXE_whosthat");

#[tokio::test]
async fn the_jwks_publishes_every_key_under_its_thumbprint() {
    let dir = tempfile::tempdir().unwrap();
    let (es, rs, ed) = (
        key_file(dir.path(), "es.pem", Alg::Es256),
        key_file(dir.path(), "rs.pem", Alg::Rs256),
        key_file(dir.path(), "ed.pem", Alg::EdDsa),
    );
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with(&signed_config(up.addr, &[&es, &rs, &ed])).await;

    let r = get(&gw.url(JWKS), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let cc = r.header("cache-control").unwrap();
    let max_age: u64 = cc.split("max-age=").nth(1).unwrap().parse().unwrap();
    assert!(cc.starts_with("public") && max_age <= 300, "{cc}");
    let raw = r.text();
    for private in ["\"d\"", "\"p\"", "\"q\"", "PRIVATE"] {
        assert!(!raw.contains(private), "{private} in {raw}");
    }

    let set = jwks(&gw).await;
    assert_eq!(set.keys.len(), 3, "the first signs, all are published");
    let expected = [
        (kid_of(&es), "ES256"),
        (kid_of(&rs), "RS256"),
        (kid_of(&ed), "EdDSA"),
    ];
    for (jwk, (kid, alg)) in set.keys.iter().zip(&expected) {
        assert_eq!(jwk.common.key_id.as_deref(), Some(kid.as_str()));
        assert_eq!(jwk.common.key_algorithm.unwrap().to_string(), *alg);
        // jsonwebtoken's own RFC 7638 thumbprint is the kid (not for OKP,
        // which it does not compute).
        if !matches!(jwk.algorithm, AlgorithmParameters::OctetKeyPair(_)) {
            assert_eq!(&jwk.thumbprint(ThumbprintHash::SHA256).unwrap(), kid);
        }
    }

    // The metadata names the JWKS; both metadata documents are one.
    let meta = get(&gw.url(METADATA), &[]).await.json();
    assert_eq!(meta["jwks_uri"], format!("{}{JWKS}", oauth_helpers::ISSUER));
    let oidc = get(&gw.url(OPENID_CONFIGURATION), &[]).await.json();
    assert_eq!(oidc, meta);

    let post = request(http::Method::POST, &gw.url(JWKS), &[], "").await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn without_keys_the_paths_stay_with_the_routes() {
    let up = spawn_upstream().await;
    let plain = spawn_gateway_with(&config_text(up.addr)).await;
    assert_eq!(get(&plain.url(JWKS), &[]).await.status, 404);
    assert_eq!(get(&plain.url(OPENID_CONFIGURATION), &[]).await.status, 404);
    let meta = get(&plain.url(METADATA), &[]).await.json();
    assert!(meta.get("jwks_uri").is_none(), "{meta}");
    // A catch-all public route gets them, as before there were keys.
    let text = config_text(up.addr)
        + &format!(
            "\n[[routes]]\nprefix = \"/\"\nupstream = \"http://{}\"\nauth = false\n",
            up.addr
        );
    let gw = spawn_gateway_with(&text).await;
    let r = get(&gw.url(JWKS), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().uri(), JWKS, "proxied to the upstream");
}

/// An assertion from `/signed/` for `token`.
async fn assertion(g: &Reloading, token: &str) -> String {
    let r = get_with_token(&g.url("/signed/x"), token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.seen().header("x-auth-assertion").expect("an assertion")
}

async fn jwks_at(g: &Reloading) -> jsonwebtoken::jwk::JwkSet {
    let r = get(&g.url(JWKS), &[]).await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn rotation_by_reload_old_tokens_verify_until_their_key_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let old = key_file(dir.path(), "2026-11.pem", Alg::Es256);
    let new = key_file(dir.path(), "2026-12.pem", Alg::Rs256);
    let (old_kid, new_kid) = (kid_of(&old), kid_of(&new));
    let up = spawn_upstream().await;
    let aud = format!("http://{}", up.addr);
    let g = start(&signed_config(up.addr, &[&old])).await;
    let login = |user: &'static str, pw: &'static str| {
        let url = g.url("/auth/access_token");
        async move {
            let r = request(
                http::Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                &format!("grant_type=password&username={user}&password={pw}&scope=read"),
            )
            .await;
            r.json()["access_token"].as_str().unwrap().to_string()
        }
    };
    let alice = login("alice", ALICE_PW).await;
    let signed_old = assertion(&g, &alice).await;
    assert_eq!(kid_in(&signed_old), old_kid);
    verify(&jwks_at(&g).await, &signed_old, &aud).unwrap();

    // 1. The new key second: published, not yet signing.
    g.reload_with(&signed_config(up.addr, &[&old, &new])).await;
    let set = jwks_at(&g).await;
    assert_eq!(set.keys.len(), 2);
    assert!(set.find(&new_kid).is_some());
    let bob = login("bob", BOB_PW).await;
    assert_eq!(kid_in(&assertion(&g, &bob).await), old_kid);

    // 2. The new key first: it signs; the old one still verifies.
    g.reload_with(&signed_config(up.addr, &[&new, &old])).await;
    let signed_new = assertion(&g, &alice).await;
    assert_eq!(
        kid_in(&signed_new),
        new_kid,
        "a reload starts a fresh cache"
    );
    let set = jwks_at(&g).await;
    verify(&set, &signed_old, &aud).expect("the old key's token still verifies");
    verify(&set, &signed_new, &aud).unwrap();

    // 3. The old key removed: its tokens never verify again.
    g.reload_with(&signed_config(up.addr, &[&new])).await;
    let set = jwks_at(&g).await;
    assert_eq!(set.keys.len(), 1);
    let e = verify(&set, &signed_old, &aud).unwrap_err();
    assert!(e.contains("no key"), "{e}");
    verify(&set, &signed_new, &aud).unwrap();

    // A key file that is not a key: refused, the keys in force stay.
    std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
    g.refused_reload(&signed_config(up.addr, &[&dir.path().join("junk.pem")]))
        .await;
    assert_eq!(jwks_at(&g).await.find(&new_kid).map(|_| ()), Some(()));
}

fn keygen(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("keygen")
        .args(args)
        .env_remove("WHOSTHAT_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn keygen_writes_a_0600_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    for (args, alg) in [
        (vec![], "ES256"),
        (vec!["--alg", "RS256"], "RS256"),
        (vec!["--alg", "EdDSA"], "EdDSA"),
    ] {
        let path = dir.path().join(format!("{alg}.pem"));
        let p = path.to_str().unwrap();
        let out = keygen(&[args.as_slice(), &[p]].concat());
        assert!(out.status.success(), "{:?}", out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&kid_of(&path)), "{stdout}");
        assert!(stdout.contains(alg), "{stdout}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read(&path).unwrap();
        let again = keygen(&[p]);
        assert_eq!(again.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("never overwrites"),
            "{again:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
    let bad = keygen(&["--alg", "HS256", dir.path().join("x.pem").to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2), "clap refuses an unknown alg");
}

#[test]
fn check_config_names_the_file_line_and_key_of_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = key_file(dir.path(), "good.pem", Alg::Es256);
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let cfg = dir.path().join("gateway.toml");
    let text = |keys: &str| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n\n[oauth]\nsigning_keys = [{keys}]\n")
    };
    let check = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        Command::new(BIN)
            .args(["check-config", "-c", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = check(text("\"good.pem\""));
    assert!(ok.status.success(), "{ok:?}");
    let out = check(text("\"good.pem\", \"junk.pem\""));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.toml:5: key `oauth.signing_keys`: key 2"),
        "{err}"
    );
    assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
    assert!(!err.contains("AAAA"), "never the key's content: {err}");
    let missing = check(text("\"nope.pem\""));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot be read"));
    let _ = good;
}
