//! The listener's TLS as a real, independent client sees it: OpenSSL's `s_client`. Old
//! protocol versions and weak suites are refused by the server (the client is told to allow
//! them, so the refusal is the server's), the whole chain is served, ALPN is http/1.1 only,
//! and a client hello without SNI works. Skipped, with a note, where `openssl` is missing.

use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn have_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("openssl is not installed: skipping the s_client checks");
    }
    ok
}

/// Writes a root CA, an intermediate and a leaf for 127.0.0.1 into the setup's folder: the
/// gateway's `tls.crt` holds leaf then intermediate, as a server must send them. Returns the
/// root's path, which only the client knows.
fn chain(s: &Setup) -> std::path::PathBuf {
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(rcgen::DnType::CommonName, "fluxgate test root");
    let root_cert = root.self_signed(&root_key).unwrap();

    let mid_key = KeyPair::generate().unwrap();
    let mut mid = CertificateParams::new(Vec::<String>::new()).unwrap();
    mid.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    mid.distinguished_name
        .push(rcgen::DnType::CommonName, "fluxgate test intermediate");
    let mid_cert = mid.signed_by(&mid_key, &root_cert, &root_key).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &mid_cert, &mid_key).unwrap();

    std::fs::write(
        s.path("tls.crt"),
        format!("{}{}", leaf_cert.pem(), mid_cert.pem()),
    )
    .unwrap();
    std::fs::write(s.path("tls.key"), leaf_key.serialize_pem()).unwrap();
    let root_path = s.path("root.pem");
    std::fs::write(&root_path, root_cert.pem()).unwrap();
    root_path
}

fn receiver(s: &Setup) -> String {
    format!(
        "name = \"a\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n",
        s.secret("a", "ka").display()
    )
}

/// A gateway serving the test chain, and the root only clients know; `None` without openssl.
fn gateway() -> Option<(Gateway, std::path::PathBuf)> {
    if !have_openssl() {
        return None;
    }
    let s = Setup::new();
    let root = chain(&s);
    let r = receiver(&s);
    Some((s.receiver(&r).start(), root))
}

/// One `s_client` handshake (then an immediate close); returns whether it succeeded and all
/// it printed.
fn s_client(port: u16, ca: &Path, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // s_client reads stdin after the handshake; end of input makes it close and exit.
    drop(child.stdin.take().map(|mut i| i.write_all(b"")));
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // s_client may exit 0 after a refused handshake; a session has a real protocol.
    let ok = out.status.success()
        && text.contains("Verify return code: 0 (ok)")
        && protocol(&text).is_some_and(|p| p != "(NONE)");
    (ok, text)
}

fn protocol(text: &str) -> Option<&str> {
    // "New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256"
    text.lines()
        .find_map(|l| l.strip_prefix("New, "))
        .and_then(|l| l.split(',').next())
}

#[test]
fn only_tls_1_2_and_1_3_are_accepted() {
    let Some((gw, root)) = gateway() else {
        return;
    };
    let (ok, text) = s_client(gw.port, &root, &["-tls1_3"]);
    assert!(ok, "{text}");
    assert_eq!(protocol(&text), Some("TLSv1.3"), "{text}");
    let (ok, text) = s_client(gw.port, &root, &["-tls1_2"]);
    assert!(ok, "{text}");
    assert_eq!(protocol(&text), Some("TLSv1.2"), "{text}");
    // OpenSSL's own default forbids these; security level 0 lets it offer them, so the
    // refusal below is the server's.
    for old in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(gw.port, &root, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "{old} must be refused: {text}");
        assert!(
            text.contains("alert protocol version") || text.contains("alert handshake failure"),
            "{old}: {text}"
        );
    }
}

#[test]
fn only_forward_secret_aead_suites_are_offered() {
    let Some((gw, root)) = gateway() else {
        return;
    };
    for good in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let (ok, text) = s_client(gw.port, &root, &["-tls1_2", "-cipher", good]);
        assert!(ok, "{good}: {text}");
        assert!(
            text.contains(&format!("Cipher is {good}")),
            "{good}: {text}"
        );
    }
    // CBC, static RSA key exchange, SHA-1 MACs, 3DES, RC4, NULL and export suites.
    for weak in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "AES128-GCM-SHA256",
        "AES128-SHA",
        "DES-CBC3-SHA",
        "RC4-SHA",
        "NULL-SHA256",
        "aNULL",
    ] {
        let cipher = format!("{weak}@SECLEVEL=0");
        let (ok, text) = s_client(gw.port, &root, &["-tls1_2", "-cipher", &cipher]);
        if text.contains("no cipher match") {
            eprintln!("this OpenSSL cannot offer {weak}: not checked");
            continue;
        }
        assert!(!ok, "{weak} must be refused: {text}");
        assert!(
            text.contains("alert handshake failure"),
            "{weak}: the server, not the client, must refuse it: {text}"
        );
    }
    for (suite, ok_expected) in [
        ("TLS_AES_128_GCM_SHA256", true),
        ("TLS_AES_256_GCM_SHA384", true),
        ("TLS_CHACHA20_POLY1305_SHA256", true),
        ("TLS_AES_128_CCM_SHA256", false),
    ] {
        let (ok, text) = s_client(gw.port, &root, &["-tls1_3", "-ciphersuites", suite]);
        assert_eq!(ok, ok_expected, "{suite}: {text}");
    }
}

#[test]
fn the_whole_chain_is_served_and_sni_is_optional() {
    let Some((gw, root)) = gateway() else {
        return;
    };
    // Verified against the root alone: the intermediate must come from the server.
    let (ok, text) = s_client(gw.port, &root, &["-showcerts", "-servername", "localhost"]);
    assert!(ok, "{text}");
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "{text}"
    );
    assert!(text.contains("fluxgate test intermediate"), "{text}");
    let (ok, text) = s_client(gw.port, &root, &["-noservername"]);
    assert!(ok, "a client hello without SNI: {text}");
}

#[test]
fn alpn_is_http_1_1_only() {
    let Some((gw, root)) = gateway() else {
        return;
    };
    let (ok, text) = s_client(gw.port, &root, &["-alpn", "h2,http/1.1"]);
    assert!(ok, "{text}");
    assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
    let (ok, text) = s_client(gw.port, &root, &[]);
    assert!(ok, "no ALPN at all is fine: {text}");
    assert!(text.contains("No ALPN negotiated"), "{text}");
    // Only h2 on offer: RFC 7301 says refuse with no_application_protocol rather than
    // pretend, and rustls does.
    let (ok, text) = s_client(gw.port, &root, &["-alpn", "h2"]);
    assert!(!ok, "{text}");
    assert!(text.contains("no application protocol"), "{text}");
}
