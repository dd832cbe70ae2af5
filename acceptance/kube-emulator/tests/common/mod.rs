//! Starting an emulator and a kube client for it.

#![allow(dead_code)]

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Error};
use kube_emulator::{Emulator, Options};

pub async fn emulator(options: Options) -> Emulator {
    // kube's rustls and ours may both be compiled in; pick one for the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Emulator::start(options).await.expect("emulator starts")
}

pub async fn client(emulator: &Emulator) -> Client {
    client_with_token(emulator, emulator.token()).await
}

/// A client presenting `token`, such as a service account's.
pub async fn client_with_token(emulator: &Emulator, token: &str) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&emulator.kubeconfig_yaml_for(token)).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

/// The HTTP code of an API error (a Status from the server).
pub fn status_code(e: &Error) -> u16 {
    match e {
        Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The message of an API error.
pub fn status_message(e: &Error) -> String {
    match e {
        Error::Api(s) => s.message.clone(),
        other => panic!("expected an API error, got {other:?}"),
    }
}
