//! Client libraries nobody here wrote, against a real gateway: Python's Authlib
//! for `private_key_jwt` (RS256 and ES256) and for polling the device
//! authorization grant, with `requests` walking the verification page as a
//! browser would. The scripts are in `tests/python/`.
//!
//! Needs `python3` with `authlib` and `requests` (`pip install authlib
//! requests`; `.ci/run` installs them): without them these tests fail, they
//! never skip.

mod common;
mod jose_helpers;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use jose_helpers::{Key, RSA_KID};

const ISSUER: &str = "http://127.0.0.1:8080";

fn python_ready() {
    let ok = Command::new("python3")
        .args(["-c", "import authlib, requests"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with authlib and requests is needed: pip install authlib requests"
    );
}

/// Runs `tests/python/<script>` with `args`; asserts it exits 0 saying "ok".
async fn run_python(script: &str, args: &[&str]) {
    python_ready();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let child = Command::new("python3")
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let out = tokio::time::timeout(
        HANG_GUARD,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the script finished within the hang guard")
    .unwrap()
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// The standard config plus `jwt-svc` (the RSA fixture key and `ec`), `tv`
/// (a public device client) and polls 1 s apart.
async fn gateway(ec: &Key, dir: &Path) -> (Gateway, Upstream) {
    let up = spawn_upstream().await;
    let jwks = dir.join("jwt-svc.jwks.json");
    let set =
        serde_json::json!({"keys": [Key::rs256().jwk_with_kid(RSA_KID), ec.jwk_with_kid("ec-1")]});
    std::fs::write(&jwks, set.to_string()).unwrap();
    let text = config_text(up.addr).replacen(
        "[oauth]\n",
        "[oauth]\ndevice_poll_interval = \"1s\"\n",
        1,
    ) + &format!(
        "\n[[clients]]\nid = \"jwt-svc\"\njwks = \"{}\"\ngrants = [\"client_credentials\"]\nscopes = [\"read\"]\nintrospect = true\n\n\
         [[clients]]\nid = \"tv\"\ngrants = [\"device_code\"]\nscopes = [\"read\"]\n",
        jwks.display()
    );
    (spawn_gateway_with(&text).await, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_private_key_jwt_rs256_and_es256() {
    let (ec, dir) = (Key::es256(), tempfile::tempdir().unwrap());
    let (gw, _up) = gateway(&ec, dir.path()).await;
    let ec_pem = dir.path().join("ec.pem");
    std::fs::write(&ec_pem, &ec.pem).unwrap();
    let rsa_pem = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rsa-client.pem");
    let base = gw.url("");
    for (pem, alg) in [(rsa_pem.as_path(), "RS256"), (ec_pem.as_path(), "ES256")] {
        let pem = pem.display().to_string();
        run_python("private_key_jwt.py", &[&base, ISSUER, "jwt-svc", &pem, alg]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_polls_the_device_flow_to_tokens() {
    let (ec, dir) = (Key::es256(), tempfile::tempdir().unwrap());
    let (gw, _up) = gateway(&ec, dir.path()).await;
    run_python("device_flow.py", &[&gw.url(""), "tv", "alice", ALICE_PW]).await;
}
