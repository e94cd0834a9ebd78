//! `baton dev --tls` end to end: the real binary makes its throw-away certificates, serves every
//! port with TLS, and the CLI (flags or `BATON_*` variables) and etcdctl reach it with them and
//! only with them. SIGHUP reloads certificates instead of ending the process.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use common::{free_ports, installed, wait_for_line, Proc, BATON};

/// Runs `baton ARGS` with `env`: (exit code, stdout, stderr).
fn baton(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let out = Command::new(BATON).args(args).envs(env.iter().map(|(k, v)| (k, v))).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn tls_env(dir: &Path) -> Vec<(&'static str, String)> {
    let file = |f: &str| dir.join(f).to_str().unwrap().to_string();
    vec![("BATON_CACERT", file("ca.pem")), ("BATON_CERT", file("client.pem")), ("BATON_KEY", file("client-key.pem"))]
}

#[test]
fn dev_tls_serves_every_port_with_its_throwaway_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ports = free_ports(3);
    let (client, etcd, http) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]), ports[2]);
    let mut dev = Proc(
        Command::new(BATON)
            .args(["dev", "--tls", "--data", data.to_str().unwrap(), "--client-addr", &client, "--etcd-addr", &etcd])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut dev.0, "export BATON_CACERT=");
    let certs = data.join("tls");
    let env = tls_env(&certs);
    let eps = ["--endpoints", client.as_str()];

    // With the certificates (variables, then flags): served.
    let (code, out, err) = baton(&[&["counter"][..], &eps, &["c", "add", "2"]].concat(), &env);
    assert_eq!((code, out.trim()), (0, "2"), "{err}");
    let flags: Vec<String> =
        env.iter().flat_map(|(k, v)| [format!("--{}", k[6..].to_lowercase()), v.clone()]).collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (code, out, err) = baton(&[&flags[..], &["counter"], &eps, &["c", "get"]].concat(), &[]);
    assert_eq!((code, out.trim()), (0, "2"), "{err}");
    // Plaintext, or TLS without a client certificate: not served (69: unavailable).
    let (code, _, err) = baton(&[&["counter"][..], &eps, &["c", "get"]].concat(), &[]);
    assert_eq!(code, 69, "plaintext: {err}");
    let (code, _, err) = baton(&[&["counter"][..], &eps, &["c", "get"]].concat(), &env[..1]);
    assert_eq!(code, 69, "no client certificate: {err}");
    // A certificate without a CA is a usage error that says what is missing.
    let (code, _, err) = baton(&[&flags[2..], &["counter"], &eps, &["c", "get"]].concat(), &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--cert needs --cacert"), "{err}");

    // SIGHUP reloads the certificates; the process goes on serving.
    common::signal(dev.0.id(), libc::SIGHUP);
    let (code, out, err) = baton(&[&["counter"][..], &eps, &["c", "add", "1"]].concat(), &env);
    assert_eq!((code, out.trim()), (0, "3"), "after SIGHUP: {err}");
    assert!(dev.0.try_wait().unwrap().is_none(), "SIGHUP ended the server");

    if installed("etcdctl") {
        let etcdctl = |with_cert: bool, args: &[&str]| {
            let mut cmd = Command::new("etcdctl");
            cmd.env("ETCDCTL_API", "3").args(["--endpoints", &format!("https://{etcd}"), "--dial-timeout", "2s"]);
            cmd.args(["--command-timeout", "3s", "--cacert", &env[0].1]);
            if with_cert {
                cmd.args(["--cert", &env[1].1, "--key", &env[2].1]);
            }
            let out = cmd.args(args).output().unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        assert_eq!(etcdctl(true, &["put", "k", "v"]), (true, "OK\n".to_string()));
        assert_eq!(etcdctl(true, &["get", "k", "--print-value-only"]), (true, "v\n".to_string()));
        assert!(!etcdctl(false, &["get", "k"]).0, "etcdctl without a client certificate was served");
    }
    drop(dev);
}
