//! Flows as the policy programs report them: ring-buffer events ([`FlowEvent`]) become
//! [`Flow`]s in a bounded [`FlowLog`] (the recent ones, plus a broadcast for followers), printed
//! by [`format_flow`] like `hubble observe` prints them.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};
use tokio::sync::broadcast;
use trellis_ebpf_common::{
    CtKey, DIRECTION_INGRESS, DropReason, FLOW_FLAG_REPLY, FlowEvent, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Verdict,
    identity, tcp_flag,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// When the agent read the event (events are drained as they arrive).
    pub time: SystemTime,
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    /// `namespace/name` of the pods at either end, when known.
    pub source_pod: Option<String>,
    pub destination_pod: Option<String>,
    pub source_identity: u32,
    pub destination_identity: u32,
    /// IP protocol number.
    pub protocol: u8,
    pub verdict: Verdict,
    /// `None` for forwarded flows.
    pub drop_reason: Option<DropReason>,
    pub tcp_flags: u8,
    /// The packet answered a tracked connection.
    pub reply: bool,
    /// `DIRECTION_INGRESS` (to the pod) or `DIRECTION_EGRESS` (from it).
    pub direction: u8,
    /// The pod's host-side interface.
    pub ifindex: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// Decodes a ring-buffer record; `None` when it is not one (wrong size or values).
pub fn parse_event(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != size_of::<FlowEvent>() {
        return None;
    }
    let u16_at = |at: usize| bytes.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_ne_bytes);
    let u32_at = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
    let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes);
    let key = CtKey {
        ifindex: u32_at(0)?,
        saddr: u32_at(4)?,
        daddr: u32_at(8)?,
        sport: u16_at(12)?,
        dport: u16_at(14)?,
        proto: bytes[16],
        _pad: [0; 3],
    };
    Some(FlowEvent {
        key,
        src_identity: u32_at(20)?,
        dst_identity: u32_at(24)?,
        verdict: bytes[28],
        reason: bytes[29],
        direction: bytes[30],
        tcp_flags: bytes[31],
        flags: bytes[32],
        _pad: [0; 7],
        ts_ns: u64_at(40)?,
        packets: u64_at(48)?,
        bytes: u64_at(56)?,
    })
}

impl Flow {
    /// `names` resolves pod addresses to `namespace/name`.
    pub fn from_event(event: &FlowEvent, time: SystemTime, names: &dyn Fn(Ipv4Addr) -> Option<String>) -> Option<Self> {
        let verdict = Verdict::from_u8(event.verdict)?;
        let reason = DropReason::from_u8(event.reason)?;
        let ip = |addr: u32| Ipv4Addr::from(addr.to_ne_bytes());
        let (source, destination) = (ip(event.key.saddr), ip(event.key.daddr));
        Some(Self {
            time,
            source: SocketAddrV4::new(source, u16::from_be(event.key.sport)),
            destination: SocketAddrV4::new(destination, u16::from_be(event.key.dport)),
            source_pod: names(source),
            destination_pod: names(destination),
            source_identity: event.src_identity,
            destination_identity: event.dst_identity,
            protocol: event.key.proto,
            verdict,
            drop_reason: (verdict == Verdict::Dropped).then_some(reason),
            tcp_flags: event.tcp_flags,
            reply: event.flags & FLOW_FLAG_REPLY != 0,
            direction: event.direction,
            ifindex: event.key.ifindex,
            packets: event.packets,
            bytes: event.bytes,
        })
    }
}

/// What `trellis-agent flows --pod … --verdict …` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// `namespace/name` at either end.
    pub pod: Option<String>,
    pub verdict: Option<Verdict>,
}

impl FlowFilter {
    pub fn matches(&self, flow: &Flow) -> bool {
        let pod_ok = self
            .pod
            .as_ref()
            .is_none_or(|pod| flow.source_pod.as_ref() == Some(pod) || flow.destination_pod.as_ref() == Some(pod));
        pod_ok && self.verdict.is_none_or(|v| v == flow.verdict)
    }
}

/// Flows a slow follower may fall behind before it misses some.
const FOLLOWER_BACKLOG: usize = 4_096;

/// The most recent flows, and a broadcast of each new one for followers (`--follow`).
#[derive(Debug)]
pub struct FlowLog {
    recent: Mutex<VecDeque<Flow>>,
    capacity: usize,
    followers: broadcast::Sender<Flow>,
}

impl FlowLog {
    pub fn new(capacity: usize) -> Self {
        let (followers, _) = broadcast::channel(FOLLOWER_BACKLOG);
        Self { recent: Mutex::new(VecDeque::with_capacity(capacity)), capacity, followers }
    }

    pub fn push(&self, flow: Flow) {
        // A poisoned lock only means a reader panicked mid-copy: the log itself is intact.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= self.capacity {
            recent.pop_front();
        }
        if self.capacity > 0 {
            recent.push_back(flow.clone());
        }
        drop(recent);
        // No follower is not an error.
        let _ = self.followers.send(flow);
    }

    /// The recent flows, oldest first.
    pub fn recent(&self) -> Vec<Flow> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub fn follow(&self) -> broadcast::Receiver<Flow> {
        self.followers.subscribe()
    }
}

/// Drains the programs' flow-event ring buffer into a [`FlowLog`].
pub struct FlowReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for FlowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowReader").finish_non_exhaustive()
    }
}

impl FlowReader {
    /// Takes the ring buffer from [`crate::ebpf::EbpfDatapath::take_flow_events`].
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Moves every pending event into `log`; returns how many were read.
    pub fn drain(&mut self, log: &FlowLog, names: &dyn Fn(Ipv4Addr) -> Option<String>) -> usize {
        drain_ring(&mut self.ring, log, names)
    }

    /// Reads events as the kernel signals them until `stop` is set (checked at least every
    /// 200 ms); meant for a thread of its own.
    pub fn run(
        mut self,
        log: &FlowLog,
        names: &dyn Fn(Ipv4Addr) -> Option<String>,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [rustix::event::PollFd::new(&self.ring, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => return Err(error.into()),
            }
            self.drain(log, names);
        }
        Ok(())
    }
}

fn drain_ring(ring: &mut RingBuf<MapData>, log: &FlowLog, names: &dyn Fn(Ipv4Addr) -> Option<String>) -> usize {
    let mut read = 0;
    while let Some(item) = ring.next() {
        read += 1;
        if let Some(flow) = parse_event(&item).and_then(|e| Flow::from_event(&e, SystemTime::now(), names)) {
            log.push(flow);
        }
    }
    read
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `Nov 25 10:00:00.123` in UTC.
fn format_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar, in 400-year eras).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{} {:02} {:02}:{:02}:{:02}.{:03}",
        MONTHS[(month - 1) as usize],
        day,
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

fn endpoint(addr: SocketAddrV4, pod: Option<&String>, identity: u32, protocol: u8) -> String {
    let host = pod.cloned().unwrap_or_else(|| addr.ip().to_string());
    let name = if protocol == PROTO_TCP || protocol == PROTO_UDP { format!("{host}:{}", addr.port()) } else { host };
    let id = match identity {
        identity::HOST => "(host)".to_owned(),
        identity::WORLD => "(world)".to_owned(),
        id => format!("(ID:{id})"),
    };
    format!("{name} {id}")
}

fn tcp_flags(flags: u8) -> String {
    let names = [
        (tcp_flag::SYN, "SYN"),
        (tcp_flag::ACK, "ACK"),
        (tcp_flag::FIN, "FIN"),
        (tcp_flag::RST, "RST"),
        (tcp_flag::PSH, "PSH"),
        (tcp_flag::URG, "URG"),
    ];
    names.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect::<Vec<_>>().join(", ")
}

/// One line as `hubble observe` prints it, e.g.
/// `Nov 25 10:00:00.123: default/client-1:43210 (ID:1234) -> default/web-0:8080 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)`.
pub fn format_flow(flow: &Flow) -> String {
    let arrow = if flow.reply { "<-" } else { "->" };
    let (what, verdict) = match (flow.verdict, flow.drop_reason) {
        (Verdict::Forwarded, _) if flow.direction == DIRECTION_INGRESS => ("to-endpoint", "FORWARDED"),
        (Verdict::Forwarded, _) => ("to-stack", "FORWARDED"),
        (Verdict::Dropped, reason) => (reason.unwrap_or(DropReason::None).description(), "DROPPED"),
    };
    let summary = match flow.protocol {
        PROTO_TCP => format!("TCP Flags: {}", tcp_flags(flow.tcp_flags)),
        PROTO_UDP => "UDP".to_owned(),
        PROTO_ICMP => "ICMPv4".to_owned(),
        other => format!("IP protocol {other}"),
    };
    format!(
        "{}: {} {arrow} {} {what} {verdict} ({summary})",
        format_time(flow.time),
        endpoint(flow.source, flow.source_pod.as_ref(), flow.source_identity, flow.protocol),
        endpoint(flow.destination, flow.destination_pod.as_ref(), flow.destination_identity, flow.protocol),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use trellis_ebpf_common::DIRECTION_EGRESS;

    fn event(verdict: Verdict, reason: DropReason, flags: u8) -> FlowEvent {
        FlowEvent {
            key: CtKey {
                ifindex: 9,
                saddr: u32::from_ne_bytes([10, 244, 0, 11]),
                daddr: u32::from_ne_bytes([10, 244, 0, 10]),
                sport: 43210u16.to_be(),
                dport: 8080u16.to_be(),
                proto: PROTO_TCP,
                _pad: [0; 3],
            },
            src_identity: 1234,
            dst_identity: 5678,
            verdict: verdict as u8,
            reason: reason as u8,
            direction: DIRECTION_INGRESS,
            tcp_flags: flags,
            flags: 0,
            _pad: [0; 7],
            ts_ns: 42,
            packets: 1,
            bytes: 74,
        }
    }

    fn bytes(event: &FlowEvent) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [event.key.ifindex, event.key.saddr, event.key.daddr] {
            out.extend(v.to_ne_bytes());
        }
        out.extend(event.key.sport.to_ne_bytes());
        out.extend(event.key.dport.to_ne_bytes());
        out.extend([event.key.proto, 0, 0, 0]);
        out.extend(event.src_identity.to_ne_bytes());
        out.extend(event.dst_identity.to_ne_bytes());
        out.extend([event.verdict, event.reason, event.direction, event.tcp_flags, event.flags]);
        out.extend([0; 7]);
        for v in [event.ts_ns, event.packets, event.bytes] {
            out.extend(v.to_ne_bytes());
        }
        out
    }

    fn names(ip: Ipv4Addr) -> Option<String> {
        match ip.octets()[3] {
            10 => Some("default/web-0".into()),
            11 => Some("default/client-1".into()),
            _ => None,
        }
    }

    // 2026-11-25T10:00:00.123Z
    const TIME: u64 = 1_795_600_800;

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(TIME * 1_000 + 123)
    }

    #[test]
    fn events_decode_from_their_bytes() {
        let sent = event(Verdict::Dropped, DropReason::PolicyDenied, tcp_flag::SYN);
        assert_eq!(parse_event(&bytes(&sent)), Some(sent));
        assert_eq!(parse_event(&bytes(&sent)[..60]), None);
    }

    #[test]
    fn flows_print_like_hubble() {
        let flow = |e| Flow::from_event(&e, at(), &names).expect("a valid event");
        let forwarded = flow(event(Verdict::Forwarded, DropReason::None, tcp_flag::SYN));
        assert_eq!(
            format_flow(&forwarded),
            "Nov 25 10:00:00.123: default/client-1:43210 (ID:1234) -> default/web-0:8080 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)"
        );
        let dropped = flow(event(Verdict::Dropped, DropReason::PolicyDenied, tcp_flag::SYN));
        assert_eq!(dropped.drop_reason, Some(DropReason::PolicyDenied));
        assert!(
            format_flow(&dropped).ends_with("(ID:5678) Policy denied DROPPED (TCP Flags: SYN)"),
            "{}",
            format_flow(&dropped)
        );
        let mut reply = event(Verdict::Forwarded, DropReason::None, tcp_flag::SYN | tcp_flag::ACK);
        reply.flags = FLOW_FLAG_REPLY;
        reply.direction = DIRECTION_EGRESS;
        reply.src_identity = identity::WORLD;
        reply.key.saddr = u32::from_ne_bytes([192, 0, 2, 1]);
        assert!(format_flow(&flow(reply)).contains(
            ": 192.0.2.1:43210 (world) <- default/web-0:8080 (ID:5678) to-stack FORWARDED (TCP Flags: SYN, ACK)"
        ));
        assert_eq!(
            Flow::from_event(&event(Verdict::Forwarded, DropReason::None, 0), at(), &names).map(|f| f.drop_reason),
            Some(None)
        );
        let mut bad = event(Verdict::Forwarded, DropReason::None, 0);
        bad.verdict = 9;
        assert_eq!(Flow::from_event(&bad, at(), &names), None);
    }

    #[test]
    fn the_log_keeps_the_latest_and_feeds_followers() {
        let log = FlowLog::new(2);
        let mut follower = log.follow();
        for port in [1u16, 2, 3] {
            let mut e = event(Verdict::Forwarded, DropReason::None, 0);
            e.key.sport = port.to_be();
            log.push(Flow::from_event(&e, at(), &names).expect("valid"));
        }
        let ports: Vec<u16> = log.recent().iter().map(|f| f.source.port()).collect();
        assert_eq!(ports, vec![2, 3]);
        assert_eq!(follower.try_recv().map(|f| f.source.port()).ok(), Some(1));
        let filter = FlowFilter { pod: Some("default/web-0".into()), verdict: Some(Verdict::Dropped) };
        assert!(!filter.matches(&log.recent()[0]));
        assert!(FlowFilter { verdict: Some(Verdict::Forwarded), ..filter }.matches(&log.recent()[0]));
    }
}
