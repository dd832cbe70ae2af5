//! The admin listener and the `flows` client over a real TCP connection: recent flows with
//! filters, then followed ones as they are pushed into the log; bad queries are refused, and an
//! agent without flow observability says so.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use trellis_agent::admin::{self, Admin, FlowQuery};
use trellis_agent::cli::fetch_flows;
use trellis_agent::flows::{Flow, FlowFilter, FlowLog};
use trellis_agent::metrics::Metrics;
use trellis_agent::readiness::Readiness;
use trellis_ebpf_common::{DIRECTION_INGRESS, DropReason, PROTO_TCP, Verdict};

const PATIENCE: Duration = Duration::from_secs(60);

fn flow(client: u8, verdict: Verdict) -> Flow {
    Flow {
        time: SystemTime::now(),
        source: SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, client), 40000),
        destination: SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 100), 8080),
        source_pod: Some(format!("shop/client-{client}")),
        destination_pod: Some("shop/web-0".into()),
        source_identity: 1000 + u32::from(client),
        destination_identity: 2000,
        protocol: PROTO_TCP,
        verdict,
        drop_reason: (verdict == Verdict::Dropped).then_some(DropReason::PolicyDenied),
        tcp_flags: 0x02,
        reply: false,
        direction: DIRECTION_INGRESS,
        ifindex: 7,
        packets: 1,
        bytes: 60,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_served_filtered_and_followed() {
    let log = Arc::new(FlowLog::new(100));
    log.push(flow(1, Verdict::Forwarded));
    log.push(flow(2, Verdict::Dropped));
    let admin =
        Admin { metrics: Metrics::new(), readiness: Arc::new(Readiness::default()), flows: Some(Arc::clone(&log)) };
    let listener = admin::bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
    let server = listener.local_addr().expect("bound address");
    let serving = tokio::spawn(admin.serve(listener));

    let fetch = |query: FlowQuery| async move {
        let mut text = Vec::new();
        fetch_flows(server, &query, |chunk| text.extend_from_slice(chunk))
            .await
            .map(|()| String::from_utf8_lossy(&text).into_owned())
    };
    let all = fetch(FlowQuery::default()).await.expect("flows");
    assert_eq!(all.lines().count(), 2, "{all}");
    let dropped = FlowQuery { filter: FlowFilter { verdict: Some(Verdict::Dropped), pod: None }, follow: false };
    let text = fetch(dropped.clone()).await.expect("flows");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("shop/client-2") && text.contains("DROPPED"), "{text}");
    let by_pod = FlowQuery { filter: FlowFilter { pod: Some("shop/client-1".into()), verdict: None }, follow: false };
    let text = fetch(by_pod).await.expect("flows");
    assert!(text.lines().count() == 1 && text.contains("FORWARDED"), "{text}");

    // Following: the recent dropped flow, then new dropped ones only.
    let seen = Arc::new(Mutex::new(String::new()));
    let follower = {
        let seen = Arc::clone(&seen);
        let query = FlowQuery { follow: true, ..dropped };
        tokio::spawn(async move {
            fetch_flows(server, &query, |chunk| {
                seen.lock().expect("lock").push_str(&String::from_utf8_lossy(chunk));
            })
            .await
        })
    };
    let lines = || seen.lock().expect("lock").lines().count();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while lines() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the recent flow never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.push(flow(3, Verdict::Forwarded));
    log.push(flow(4, Verdict::Dropped));
    while lines() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the followed flow never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = seen.lock().expect("lock").clone();
    assert!(text.contains("shop/client-4") && !text.contains("shop/client-3"), "{text}");
    follower.abort();
    serving.abort();
}

#[tokio::test]
async fn a_bad_query_is_refused_with_its_problems() {
    let admin = Admin {
        metrics: Metrics::new(),
        readiness: Arc::new(Readiness::default()),
        flows: Some(Arc::new(FlowLog::new(1))),
    };
    let listener = admin::bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
    let server = listener.local_addr().expect("bound address");
    let serving = tokio::spawn(admin.serve(listener));
    let bad = FlowQuery { filter: FlowFilter { pod: Some("no-namespace".into()), verdict: None }, follow: false };
    let error = fetch_flows(server, &bad, |_| {}).await.expect_err("refused");
    assert!(error.contains("400") && error.contains("NAMESPACE/NAME"), "{error}");
    serving.abort();
}

#[tokio::test]
async fn with_flow_observability_off_flows_says_so() {
    let admin = Admin { metrics: Metrics::new(), readiness: Arc::new(Readiness::default()), flows: None };
    let listener = admin::bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
    let server = listener.local_addr().expect("bound address");
    let serving = tokio::spawn(admin.serve(listener));
    let error = fetch_flows(server, &FlowQuery::default(), |_| {}).await.expect_err("no flows");
    assert!(error.contains("404") && error.contains("flow observability is off"), "{error}");
    assert!(error.contains("TRELLIS_FLOW_OBSERVABILITY=false"), "{error}");
    serving.abort();
}
