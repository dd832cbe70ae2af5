//! Process start to handshake line, the cost Terraform pays 3-4 times per
//! command (it starts a provider process per phase). Median of 20 runs
//! after 3 warm-ups, with AutoMTLS (P-521 server certificate generated at
//! start) and plaintext. Run: `cargo bench -p terraform-provider-kube --bench handshake`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-kube");
const COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
const WARMUP: usize = 3;
const RUNS: usize = 20;

fn client_cert_pem() -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("certificate").pem()
}

fn time_to_handshake(client_cert: Option<&str>) -> Duration {
    let mut cmd = Command::new(BIN);
    cmd.env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match client_cert {
        Some(pem) => cmd.env("PLUGIN_CLIENT_CERT", pem),
        None => cmd.env_remove("PLUGIN_CLIENT_CERT"),
    };
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("handshake");
    let elapsed = start.elapsed();
    assert!(line.starts_with("1|5|tcp|"), "unexpected handshake {line:?}");
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}

fn report(label: &str, client_cert: Option<&str>) {
    for _ in 0..WARMUP {
        time_to_handshake(client_cert);
    }
    let mut samples: Vec<Duration> = (0..RUNS).map(|_| time_to_handshake(client_cert)).collect();
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<10} median {:6.2} ms   min {:6.2} ms   max {:6.2} ms   ({RUNS} runs)",
        ms(samples[RUNS / 2]),
        ms(samples[0]),
        ms(samples[RUNS - 1])
    );
}

fn main() {
    let pem = client_cert_pem();
    println!("process start to handshake line, {BIN}");
    report("AutoMTLS", Some(&pem));
    report("plaintext", None);
}
