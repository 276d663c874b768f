//! A real configuration on disk, loaded once, for targets that need receivers.

// Each target includes this file and uses a different part of it.
#![allow(dead_code)]

use fluxgate::config::Settings;
use std::fmt::Write as _;
use std::path::PathBuf;

/// A folder with a certificate, a kubeconfig and a token, that lives as long as the process.
pub fn folder() -> PathBuf {
    let dir = tempfile::tempdir().expect("a temporary folder").keep();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    std::fs::write(dir.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    std::fs::write(
        dir.join("kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
    )
    .unwrap();
    std::fs::write(dir.join("token"), "fuzz-secret").unwrap();
    dir
}

/// The `[server]` and `[kubernetes]` sections for `dir`.
pub fn head(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "[server]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"{d}/tls.crt\"\ntls_key = \"{d}/tls.key\"\n\n[kubernetes]\nkubeconfig = \"{d}/kubeconfig\"\n\n"
    )
}

/// Settings with `n` github receivers, `r0` … `r{n-1}` in flux-system.
pub fn settings(n: usize) -> Settings {
    let dir = folder();
    let mut text = head(&dir);
    for i in 0..n {
        let _ = write!(
            text,
            "[[receivers]]\nname = \"r{i}\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}/token\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n\n",
            dir.display()
        );
    }
    let path = dir.join("fluxgate.toml");
    std::fs::write(&path, text).unwrap();
    Settings::load(&path).expect("the fuzz configuration loads")
}
