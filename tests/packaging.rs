//! Packaging: the systemd unit verifies and is hardened, the Dockerfile builds with the CI
//! script into a non-root distroless image, and the documented environment overrides are real
//! configuration keys.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `systemd-analyze`, or None (with a note) when this machine has none.
fn systemd_analyze() -> Option<&'static str> {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => Some("systemd-analyze"),
        _ => {
            println!("skipped: systemd-analyze is not installed");
            None
        }
    }
}

/// The unit with the binary it runs replaced by the one cargo built, in a folder of its own
/// and under its own name (systemd names the unit after the file).
fn unit_copy(dir: &Path) -> PathBuf {
    named_unit_copy(dir, "fluxgate.service")
}

/// `systemd/<name>` in `dir`, running the binary under test.
fn named_unit_copy(dir: &Path, name: &str) -> PathBuf {
    let unit = read(&format!("systemd/{name}")).replace("/usr/local/bin/fluxgate", BIN);
    let path = dir.join(name);
    std::fs::write(&path, unit).unwrap();
    path
}

/// `systemd-analyze verify` passes on the unit at `path`, with no complaint about it
/// (complaints about other units on this machine are not ours; about an uninstalled unit,
/// expected).
fn verifies(analyze: &str, path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let out = Command::new(analyze)
        .args(["verify", "--no-pager"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(name.as_str()))
        .filter(|l| !l.contains("not installed") && !l.contains("not enabled"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    verifies(analyze, &unit_copy(dir.path()));
}

#[test]
fn the_systemd_unit_is_hardened() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let out = Command::new(analyze)
        .args(["security", "--no-pager", "--offline=yes"])
        .arg(repo("systemd/fluxgate.service"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("offline") {
        println!("skipped: this systemd-analyze has no --offline (systemd < 250): {stderr}");
        return;
    }
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for fluxgate.service"))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}{stderr}"));
    let score: f64 = line
        .rsplit(": ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("{}", line.trim());
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{stdout}");
}

/// Dockerfile instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_with_the_ci_script_into_a_non_root_distroless_image() {
    let all = instructions(&read("Dockerfile"));
    let stages: Vec<&[String]> = {
        let starts: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].starts_with("FROM "))
            .collect();
        assert!(starts.len() >= 2, "a multi-stage build: {all:#?}");
        starts
            .iter()
            .enumerate()
            .map(|(n, &s)| &all[s..*starts.get(n + 1).unwrap_or(&all.len())])
            .collect()
    };
    let (build, last) = (stages[0], stages[stages.len() - 1]);

    assert!(
        build[0].contains("rust:") && build[0].contains("bookworm"),
        "{build:#?}"
    );
    let runs: Vec<&String> = build.iter().filter(|i| i.starts_with("RUN ")).collect();
    assert!(
        runs.iter().any(|r| r.contains("scripts/build-release")),
        "the build stage runs scripts/build-release: {build:#?}"
    );
    assert!(
        !runs.iter().any(|r| r.contains("cargo ")),
        "the build stage builds only through scripts/build-release: {build:#?}"
    );
    let script = repo("scripts/build-release");
    let mode = std::os::unix::fs::PermissionsExt::mode(&script.metadata().unwrap().permissions());
    assert!(mode & 0o111 != 0, "scripts/build-release is executable");

    assert!(
        last[0].contains("gcr.io/distroless/cc-debian12") && last[0].contains(":nonroot"),
        "{}",
        last[0]
    );
    let has = |prefix: &str, what: &[&str]| {
        last.iter()
            .any(|i| i.starts_with(prefix) && what.iter().all(|w| i.contains(w)))
    };
    assert!(has("USER ", &["nonroot"]), "{last:#?}");
    assert!(has("EXPOSE ", &["8443", "9102"]), "{last:#?}");
    assert!(
        has("COPY ", &["--from=build", "/usr/local/bin/fluxgate"]),
        "{last:#?}"
    );
    assert!(
        has("ENTRYPOINT ", &["\"/usr/local/bin/fluxgate\""]),
        "{last:#?}"
    );
    assert!(has("VOLUME ", &["/var/lib/fluxgate"]), "{last:#?}");
    assert!(
        has(
            "HEALTHCHECK ",
            &["\"probe\"", "http://127.0.0.1:9102/healthz"]
        ),
        "the health check uses the admin listener: {last:#?}"
    );
    // The admin listener stays private unless the operator opens it.
    assert!(!has("ENV ", &["ADMIN_LISTEN"]), "{last:#?}");
}

#[test]
fn the_health_check_command_exists() {
    let out = Command::new(BIN)
        .args(["probe", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `FLUXGATE__A__B=value` settings: active or commented-out lines of an environment file,
/// or the unit's `Environment=` lines.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#').trim();
            let l = l.strip_prefix("Environment=").unwrap_or(l);
            let (key, value) = l.split_once('=')?;
            let shaped = key.starts_with("FLUXGATE__")
                && key.matches("__").count() == 2
                && key
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            (shaped && !value.is_empty() && !value.contains(char::is_whitespace))
                .then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// Runs `fluxgate check --offline` on a minimal valid configuration with one override; None
/// when the value is a path that does not exist on this machine.
fn check_with(key: &str, value: &str) -> Option<(bool, String)> {
    let s = Setup::new();
    let secret = s.secret("r", "a-token");
    let s = s.receiver(&format!(
        "name = \"r\"\nnamespace = \"flux-system\"\ntype = \"github\"\nsecret_file = \"{}\"\n\
         resources = [{{ kind = \"GitRepository\", name = \"app\" }}]",
        secret.display()
    ));
    s.offline_kubeconfig();
    let config = s.write_config(8443, 9102);
    // The unit's paths, moved into this test's folder: %d (the credentials) holds tls.crt,
    // tls.key and kubeconfig, as the Setup folder does.
    let d = s.dir.path().display().to_string();
    let value = value
        .replace("%d", &d)
        .replace("/var/lib/fluxgate", &format!("{d}/state"))
        .replace("/run/fluxgate", &d);
    if value.starts_with('/') && !Path::new(&value).exists() && !value.starts_with(&d) {
        return None;
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--offline", "--config"]).arg(&config);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLUXGATE__")) {
        cmd.env_remove(k);
    }
    let out = cmd.env(key, &value).output().unwrap();
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    ))
}

#[test]
fn the_documented_environment_overrides_are_configuration_keys() {
    // The check is worth something only if an unknown key fails.
    let (ok, out) = check_with("FLUXGATE__SERVER__NO_SUCH_KEY", "1").unwrap();
    assert!(!ok, "an unknown key must be refused:\n{out}");

    let mut all = settings(&read("systemd/fluxgate.env.example"));
    assert!(all.len() >= 10, "{all:?}");
    let from_unit = settings(&read("systemd/fluxgate.service"));
    assert!(from_unit.len() >= 5, "{from_unit:?}");
    all.extend(from_unit);
    let mut checked = 0;
    for (key, value) in &all {
        let Some((ok, out)) = check_with(key, value) else {
            println!("{key}={value}: skipped, no such path here");
            continue;
        };
        assert!(ok, "{key}={value}:\n{out}");
        println!("{key}={value}: ok");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} checked");
}

#[test]
fn the_check_unit_verifies() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    verifies(
        analyze,
        &named_unit_copy(dir.path(), "fluxgate-check.service"),
    );
}

/// `Key=value` lines of one `[Section]` of a unit, in order.
fn unit_lines(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in unit.lines().map(str::trim) {
        if l.starts_with('[') {
            inside = l == format!("[{section}]");
        } else if inside && !l.starts_with('#') {
            if let Some((k, v)) = l.split_once('=') {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

fn one(lines: &[(String, String)], key: &str) -> String {
    let found: Vec<&String> = lines
        .iter()
        .filter(|(k, _)| k == key)
        .map(|l| &l.1)
        .collect();
    assert_eq!(found.len(), 1, "{key}= once: {found:?}");
    found[0].clone()
}

/// A unit's time value written as plain seconds (`30` or `30s`).
fn seconds(v: &str) -> u64 {
    v.trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("not a number of seconds: {v:?}"))
}

#[test]
fn a_start_that_keeps_failing_reaches_the_start_limit() {
    let unit = read("systemd/fluxgate.service");
    let (u, s) = (unit_lines(&unit, "Unit"), unit_lines(&unit, "Service"));
    assert_eq!(one(&s, "Restart"), "on-failure");
    // systemd reads the start limit in [Unit] only (in [Service] it is ignored since v230).
    assert!(!s.iter().any(|(k, _)| k.starts_with("StartLimit")), "{s:?}");
    let interval = seconds(&one(&u, "StartLimitIntervalSec"));
    let burst: u64 = one(&u, "StartLimitBurst").parse().unwrap();
    let restart = seconds(&one(&s, "RestartSec"));
    let start_timeout = seconds(&one(&s, "TimeoutStartSec"));
    // The slowest failing start runs into TimeoutStartSec; `burst` of them, RestartSec apart,
    // must still fall within the window, or the limit is never reached (the old unit: 2 s
    // apart against systemd's default 5 starts in 10 s, so it restarted forever).
    let slowest = burst * (restart + start_timeout);
    assert!(
        burst >= 2 && slowest <= interval,
        "{burst} starts take up to {slowest} s, beyond StartLimitIntervalSec={interval}"
    );
}

#[test]
fn the_unit_waits_for_readiness_and_keeps_the_configuration_read_only() {
    let unit = read("systemd/fluxgate.service");
    let s = unit_lines(&unit, "Service");
    assert_eq!(one(&s, "Type"), "notify");
    assert_eq!(one(&s, "NotifyAccess"), "main");
    assert_eq!(one(&s, "ExecReload"), "/bin/kill -HUP $MAINPID");
    // ConfigurationDirectory= would mount /etc/fluxgate writable through ProtectSystem=strict.
    assert!(
        !s.iter().any(|(k, _)| k == "ConfigurationDirectory"),
        "{s:?}"
    );
    assert_eq!(one(&s, "ProtectSystem"), "strict");
    assert!(!s
        .iter()
        .any(|(k, v)| k == "ReadWritePaths" && v.contains("/etc")));
    // The upgrade socket's folder is the service's own (mode 0700), not a shared one.
    assert_eq!(one(&s, "RuntimeDirectoryMode"), "0700");
    assert!(s.contains(&(
        "Environment".into(),
        "FLUXGATE__SERVER__UPGRADE_SOCK=/run/fluxgate/upgrade.sock".into()
    )));
    // EPERM refusals are not audited; the comment must not say they are.
    assert_eq!(one(&s, "SystemCallErrorNumber"), "EPERM");
    assert!(
        !unit.contains("(and is logged by the kernel's audit)"),
        "the comment on SystemCallErrorNumber= must not promise an audit record"
    );
    assert!(unit.contains("is NOT logged anywhere"));
}

#[test]
fn the_check_unit_runs_as_the_service_runs() {
    let service = unit_lines(&read("systemd/fluxgate.service"), "Service");
    let check = unit_lines(&read("systemd/fluxgate-check.service"), "Service");
    let shared = [
        "DynamicUser",
        "User",
        "StateDirectory",
        "StateDirectoryMode",
        "UMask",
        "WorkingDirectory",
        "Environment",
        "EnvironmentFile",
        "LoadCredential",
    ];
    for key in shared {
        let pick = |lines: &[(String, String)]| -> Vec<String> {
            lines
                .iter()
                .filter(|(k, _)| k == key)
                .map(|l| l.1.clone())
                .collect()
        };
        let (a, b) = (pick(&service), pick(&check));
        assert!(!a.is_empty(), "fluxgate.service has no {key}=");
        assert_eq!(
            a, b,
            "{key}= differs between fluxgate.service and fluxgate-check.service"
        );
    }
    assert_eq!(one(&check, "Type"), "oneshot");
    // The full check: configuration, credentials, the API and RBAC (no --offline).
    assert_eq!(
        one(&check, "ExecStart"),
        "/usr/local/bin/fluxgate check --config /etc/fluxgate/fluxgate.toml"
    );
    assert_eq!(
        one(&service, "ExecStart"),
        "/usr/local/bin/fluxgate serve --config /etc/fluxgate/fluxgate.toml"
    );
    // The configuration names credentials under fluxgate.service's folder.
    assert_eq!(
        one(&check, "BindReadOnlyPaths"),
        "%d:/run/credentials/fluxgate.service"
    );
}

/// The README's systemd path, as written: each file it puts under /etc/fluxgate/credentials/
/// is one the unit loads, under the name the configuration reads it by.
#[test]
fn the_readme_puts_each_credential_where_the_unit_loads_it() {
    let readme = read("README.md");
    let service = unit_lines(&read("systemd/fluxgate.service"), "Service");
    let loaded: Vec<(String, String)> = service
        .iter()
        .filter(|(k, _)| k == "LoadCredential")
        .map(|(_, v)| {
            let (name, path) = v.split_once(':').unwrap();
            (name.to_string(), path.to_string())
        })
        .collect();
    // And the lines the README itself tells to add (the fleet's kubeconfigs).
    let added = readme.lines().filter_map(|l| {
        let (name, path) = l.trim().strip_prefix("LoadCredential=")?.split_once(':')?;
        Some((name.to_string(), path.to_string()))
    });
    let loaded: Vec<(String, String)> = loaded.into_iter().chain(added).collect();
    let word_after = |text: &str, prefix: &str| -> Vec<String> {
        text.match_indices(prefix)
            .map(|(i, _)| {
                text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                    .collect::<String>()
                    .trim_end_matches('.')
                    .to_string()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let written = word_after(&readme, "/etc/fluxgate/credentials/");
    let read_by_config = word_after(&readme, "/run/credentials/fluxgate.service/");
    assert!(written.len() >= 4, "{written:?}");
    assert!(!read_by_config.is_empty(), "{read_by_config:?}");
    for name in written.iter().chain(&read_by_config) {
        assert!(
            loaded
                .iter()
                .any(|(n, p)| n == name && *p == format!("/etc/fluxgate/credentials/{name}")),
            "README names the credential {name:?}, which the unit does not load: {loaded:?}"
        );
    }
    assert!(readme.contains("243/CREDENTIALS"));
    assert!(readme.contains("systemctl start fluxgate-check"));
}

/// `fluxgate check` with the unit's own environment (its %d credentials folder standing in
/// for systemd's) and a configuration that names only the receiver's secret, as the README
/// writes it: the paths of the certificate, key, kubeconfig, queue and upgrade socket come
/// from the unit.
#[test]
fn check_runs_on_the_units_environment_and_credentials() {
    let s = Setup::new();
    let creds = s.dir.path();
    std::fs::write(creds.join("webhook-token"), "a-token").unwrap();
    owner_only(&creds.join("webhook-token"));
    s.offline_kubeconfig();
    let state = s.path("state");
    let run = s.path("run");
    std::fs::create_dir(&state).unwrap();
    std::fs::create_dir(&run).unwrap();
    owner_only(&run);
    let config = s.path("fluxgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[receivers]]\nname = \"r\"\nnamespace = \"flux-system\"\ntype = \"github\"\n\
             secret_file = \"{}/webhook-token\"\nresources = [{{ kind = \"GitRepository\", name = \"app\" }}]\n",
            creds.display()
        ),
    )
    .unwrap();
    let unit = read("systemd/fluxgate.service");
    let env: Vec<(String, String)> = unit_lines(&unit, "Service")
        .into_iter()
        .filter(|(k, _)| k == "Environment")
        .filter_map(|(_, kv)| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .map(|(k, v)| {
            let v = v
                .replace("%d", &creds.display().to_string())
                .replace("/var/lib/fluxgate", &state.display().to_string())
                .replace("/run/fluxgate", &run.display().to_string());
            (k, v)
        })
        .collect();
    assert_eq!(env.len(), 5, "{env:?}");
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--offline", "--config"]).arg(&config);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLUXGATE__")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CREDENTIALS_DIRECTORY", creds)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{env:?}\n{text}");
    assert!(!text.contains("a-token"), "{text}");
}
