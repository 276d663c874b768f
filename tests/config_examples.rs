//! Every example in config/ is a working configuration: with its files put in place, it passes
//! `fluxgate check --offline`, the command the README guide runs before `serve`.

use crate::common::*;
use std::path::Path;
use std::process::Command;

/// Writes the files an example refers to under /etc/fluxgate into `etc`: a certificate and
/// key, an offline kubeconfig, and a token for every other file.
fn materialise(example: &str, etc: &Path) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(etc.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(etc.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    std::fs::write(
        etc.join("kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
    )
    .unwrap();
    for line in example.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for part in line.split('"').filter(|p| p.starts_with("/etc/fluxgate/")) {
            let name = &part["/etc/fluxgate/".len()..];
            let path = etc.join(name);
            if !path.exists() {
                std::fs::write(path, "0123456789abcdef0123456789abcdef").unwrap();
            }
        }
    }
    // Owner-only, as the README's guide makes them: check fails on secrets others may read.
    for entry in std::fs::read_dir(etc).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().is_some_and(|n| n != "tls.crt") {
            owner_only(&path);
        }
    }
}

#[test]
fn every_example_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        materialise(&text, &etc);
        let config = tmp.path().join("fluxgate.toml");
        let moved = text
            .replace("/etc/fluxgate/", &format!("{}/", etc.display()))
            .replace(
                "/var/lib/fluxgate/",
                &format!("{}/var/", tmp.path().display()),
            );
        std::fs::write(&config, moved).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--offline", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} does not pass check:\n{report}",
            path.display()
        );
        // Each example serves something: receivers of its own, or the cluster's.
        assert!(
            report.contains("ok: receiver ") || report.contains("ok: cluster mode: "),
            "{}:\n{report}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected fluxgate.toml and one example per provider, found {checked}"
    );
}

#[test]
fn probe_reports_the_admin_listener() {
    let s = Setup::new();
    let r = format!(
        "name = \"g\"\nnamespace = \"flux-system\"\ntype = \"generic\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        s.secret("g", "t").display()
    );
    let gw = s.receiver(&r).start();
    let ok = Command::new(BIN)
        .args(["probe", &format!("http://127.0.0.1:{}/readyz", gw.admin)])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ready");
    gw.api.set_down(true);
    // /readyz keeps the API's answer for a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let down = Command::new(BIN)
        .args(["probe", &format!("http://127.0.0.1:{}/readyz", gw.admin)])
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("503"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let closed = Command::new(BIN)
        .args(["probe", "http://127.0.0.1:1/healthz"])
        .output()
        .unwrap();
    assert!(!closed.status.success());
}
