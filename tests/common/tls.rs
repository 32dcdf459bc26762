//! Throwaway TLS material for upstreams served over HTTPS: a certificate
//! authority and a server certificate for `IP:127.0.0.1` and `IP:::1`
//! signed by it, made with the `openssl` command in a temporary directory.
//!
//! rustls (berth's TLS stack) refuses a certificate without a matching
//! subject alternative name, and a CA certificate presented as a server
//! certificate, so this is a real two-level chain with the extensions a
//! public one carries.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

const BINARY: &str = "openssl";

/// `openssl x509 -extfile` extensions of the CA certificate.
const CA_EXTENSIONS: &str = "\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

/// `openssl x509 -extfile` extensions of the server certificate.
const SERVER_EXTENSIONS: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// `openssl x509 -extfile` extensions of the client certificate.
const CLIENT_EXTENSIONS: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files.
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    /// Generate a fresh CA (`ca.pem`) and a server certificate
    /// (`server.pem`, key `server.key`) signed by it, valid for two days.
    pub fn generate() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("berth-pki-")
            .tempdir()
            .expect("create the PKI temp dir");
        let pki = TestPki { dir };
        let root = pki.dir.path();
        fs::write(root.join("ca.ext"), CA_EXTENSIONS).expect("write ca.ext");
        fs::write(root.join("server.ext"), SERVER_EXTENSIONS).expect("write server.ext");
        fs::write(root.join("client.ext"), CLIENT_EXTENSIONS).expect("write client.ext");

        // The CA: a key, a request, and the request self-signed. Its name
        // is its own, so that two test CAs are told apart by name too.
        let dir_name = root.file_name().unwrap_or_default().to_string_lossy();
        new_key_and_request(root, "ca", &format!("/CN=berth test CA {dir_name}"));
        openssl(
            root,
            &[
                "x509",
                "-req",
                "-in",
                "ca.csr",
                "-signkey",
                "ca.key",
                "-days",
                "2",
                "-set_serial",
                "1",
                "-extfile",
                "ca.ext",
                "-out",
                "ca.pem",
            ],
        );
        // The server and a client: keys, requests, signed by the CA.
        new_key_and_request(root, "server", "/CN=127.0.0.1");
        sign(root, "server", "2");
        new_key_and_request(root, "client", "/CN=berth test client");
        sign(root, "client", "3");
        pki
    }

    /// The client certificate, signed by the CA.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The client certificate's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The CA certificate: what a client must trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA's private key (a PEM file that is not a certificate).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.path().join("ca.key")
    }

    /// The server certificate for `IP:127.0.0.1` and `IP:::1`, signed by
    /// the CA.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server certificate's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// `<name>.pem`: `<name>.csr` signed by the CA with `<name>.ext`.
fn sign(dir: &Path, name: &str, serial: &str) {
    let (csr, ext, pem) = (
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "2",
            "-set_serial",
            serial,
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

/// `<name>.key` (P-256, unencrypted) and `<name>.csr` for `subject`.
fn new_key_and_request(dir: &Path, name: &str, subject: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
}

/// Run `openssl args…` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{BINARY}` ({e}): install the openssl package \
                 (apt-get install openssl); the TLS tests make their certificates with it"
            )
        });
    assert!(
        output.status.success(),
        "openssl {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
    );
}
