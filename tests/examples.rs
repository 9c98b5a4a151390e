//! Every config file the project ships (gateway.toml, examples/*.toml) is valid
//! for the real binary's `check-config`, with no warning under `--strict`: a
//! user who copies one gets a working start.

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_whosthat");

fn check(file: &Path) {
    let out = Command::new(BIN)
        .env_remove("WHOSTHAT_CONFIG")
        .env_remove("RUST_LOG")
        .args(["check-config", "--strict", "-c"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("running whosthat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} is refused:\n{stdout}\n{stderr}",
        file.display()
    );
    assert!(stdout.contains("is valid"), "{stdout}");
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check(&root.join("gateway.toml"));
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            check(&path);
            n += 1;
        }
    }
    assert!(n >= 1, "examples/ has no config file");
}

#[test]
fn the_redis_example_uses_redis() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(root.join("examples/redis.toml"))
        .output()
        .expect("running whosthat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("store: redis redis://127.0.0.1:6379/0"),
        "{stdout}"
    );
}
