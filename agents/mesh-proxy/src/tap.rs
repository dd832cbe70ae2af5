//! Tap: a live stream of request metadata (never bodies) for debugging, as
//! `linkerd viz tap`. Subscribers hang off a broadcast channel, so a slow
//! client only loses events and traffic never waits for it.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::metrics::Direction;

/// One finished request, as tap clients see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TapEvent {
    pub direction: Direction,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub client_id: Option<String>,
    pub server_id: Option<String>,
    pub timestamp_unix_ms: u64,
}

/// Which response statuses a tap wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFilter {
    /// `5xx`: any status whose first digit is this one.
    Class(u16),
    Exact(u16),
}

impl StatusFilter {
    fn parse(s: &str) -> Result<StatusFilter, String> {
        let bad = || format!("status `{s}` is not a status code (like 503) or class (like 5xx)");
        let bytes = s.as_bytes();
        match bytes {
            [class @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(StatusFilter::Class(u16::from(class - b'0'))),
            [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => s.parse().map(StatusFilter::Exact).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Class(class) => status / 100 == class,
            StatusFilter::Exact(code) => status == code,
        }
    }
}

/// What a tap client asked to see; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct TapFilter {
    direction: Option<Direction>,
    authority: Option<String>,
    method: Option<String>,
    path_prefix: Option<String>,
    status: Option<StatusFilter>,
}

impl TapFilter {
    /// Parses `direction=inbound&authority=web.shop:80&method=GET&path_prefix=/api&status=5xx`.
    /// Values may be percent-encoded. Unknown or repeated keys are errors, so
    /// a typo never silently widens a tap.
    pub fn from_query(query: &str) -> Result<TapFilter, String> {
        let mut filter = TapFilter::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, raw) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let value = percent_decode(raw)?;
            if value.is_empty() {
                return Err(format!("{key} has an empty value"));
            }
            let repeated = match key {
                "direction" => filter.direction.replace(parse_direction(&value)?).is_some(),
                "authority" => filter.authority.replace(value.to_ascii_lowercase()).is_some(),
                "method" => filter.method.replace(value.to_ascii_uppercase()).is_some(),
                "path_prefix" => filter.path_prefix.replace(value).is_some(),
                "status" => filter.status.replace(StatusFilter::parse(&value)?).is_some(),
                other => {
                    return Err(format!(
                        "unknown filter `{other}`: use direction, authority, method, path_prefix or status"
                    ));
                }
            };
            if repeated {
                return Err(format!("filter `{key}` is given more than once"));
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, e: &TapEvent) -> bool {
        self.direction.is_none_or(|direction| direction == e.direction)
            && self.authority.as_ref().is_none_or(|authority| authority.eq_ignore_ascii_case(&e.authority))
            && self.method.as_ref().is_none_or(|method| method.eq_ignore_ascii_case(&e.method))
            && self.path_prefix.as_ref().is_none_or(|prefix| e.path.starts_with(prefix.as_str()))
            // A request that failed before any response has no status to match.
            && self.status.is_none_or(|status| e.status.is_some_and(|code| status.matches(code)))
    }
}

fn parse_direction(s: &str) -> Result<Direction, String> {
    match s {
        "inbound" => Ok(Direction::Inbound),
        "outbound" => Ok(Direction::Outbound),
        other => Err(format!("direction `{other}` is not inbound or outbound")),
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
fn percent_decode(s: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'%' => {
                let escape = tail
                    .get(..2)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| format!("`{s}` has a bad %-escape"))?;
                bytes.push(escape);
                rest = &tail[2..];
            }
            b'+' => {
                bytes.push(b' ');
                rest = tail;
            }
            other => {
                bytes.push(other);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("`{s}` does not decode to UTF-8"))
}

/// The hub between the data plane, which publishes, and tap clients.
#[derive(Debug)]
pub struct Tap {
    sender: broadcast::Sender<TapEvent>,
}

impl Tap {
    /// `capacity` events may queue per subscriber before the slowest one
    /// starts losing the oldest.
    pub fn new(capacity: usize) -> Arc<Tap> {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Arc::new(Tap { sender })
    }

    /// Lets the data plane skip building events nobody will read.
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn publish(&self, event: TapEvent) {
        // Sending fails only when nobody is subscribed; the event is simply not wanted.
        let _unwanted = self.sender.send(event);
    }

    /// Events published from now on that match `filter`. A subscriber that
    /// falls behind skips what it missed and goes on with newer events.
    pub fn subscribe(&self, filter: TapFilter) -> impl futures::Stream<Item = TapEvent> + Send + 'static {
        let receiver = self.sender.subscribe();
        futures::stream::unfold((receiver, filter), |(mut receiver, filter)| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) if filter.matches(&event) => return Some((event, (receiver, filter))),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "tap subscriber fell behind and lost events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    fn event(direction: Direction, method: &str, authority: &str, path: &str, status: Option<u16>) -> TapEvent {
        TapEvent {
            direction,
            method: method.to_owned(),
            authority: authority.to_owned(),
            path: path.to_owned(),
            status,
            latency_ms: 1.5,
            client_id: None,
            server_id: Some("spiffe://cluster.local/ns/shop/sa/api".to_owned()),
            timestamp_unix_ms: 1_700_000_000_000,
        }
    }

    fn sample() -> TapEvent {
        event(Direction::Outbound, "GET", "api.shop.svc.cluster.local:80", "/v1/items?page=2", Some(503))
    }

    fn filter(query: &str) -> TapFilter {
        TapFilter::from_query(query).expect("valid query")
    }

    #[test]
    fn an_empty_query_matches_everything() {
        assert!(filter("").matches(&sample()));
        assert!(filter("&").matches(&event(Direction::Inbound, "POST", "x", "/", None)));
    }

    #[test]
    fn each_filter_selects_on_its_field() {
        let e = sample();
        for (query, matches) in [
            ("direction=outbound", true),
            ("direction=inbound", false),
            ("authority=API.shop.svc.cluster.local:80", true),
            ("authority=web.shop.svc.cluster.local:80", false),
            ("method=get", true),
            ("method=POST", false),
            ("path_prefix=/v1", true),
            ("path_prefix=%2Fv1%2Fitems", true),
            ("path_prefix=/v2", false),
            ("status=5xx", true),
            ("status=503", true),
            ("status=4xx", false),
            ("status=500", false),
            ("direction=outbound&method=GET&status=5XX&path_prefix=/", true),
            ("direction=outbound&method=GET&status=2xx", false),
        ] {
            assert_eq!(filter(query).matches(&e), matches, "{query}");
        }
    }

    #[test]
    fn a_status_filter_never_matches_a_request_without_response() {
        let failed = event(Direction::Inbound, "GET", "a", "/", None);
        assert!(!filter("status=5xx").matches(&failed));
        assert!(filter("method=GET").matches(&failed));
    }

    #[test]
    fn bad_queries_are_refused_with_the_reason() {
        for (query, needle) in [
            ("direction=sideways", "sideways"),
            ("status=6xx", "6xx"),
            ("status=abc", "abc"),
            ("status=99", "99"),
            ("colour=red", "colour"),
            ("method", "key=value"),
            ("method=", "empty"),
            ("method=GET&method=POST", "more than once"),
            ("path_prefix=%zz", "%-escape"),
            ("path_prefix=%ff", "UTF-8"),
        ] {
            let error = TapFilter::from_query(query).expect_err(query);
            assert!(error.contains(needle), "{query}: {error}");
        }
    }

    #[test]
    fn percent_decoding_handles_plus_and_escapes() {
        assert_eq!(percent_decode("a+b%20c%2F").expect("valid"), "a b c/");
        assert!(percent_decode("%2").is_err());
    }

    #[tokio::test]
    async fn subscribers_get_matching_events_published_after_they_subscribe() {
        let tap = Tap::new(16);
        assert!(!tap.has_subscribers());
        tap.publish(sample()); // nobody listens: dropped, no error

        let mut server_errors = Box::pin(tap.subscribe(filter("status=5xx")));
        let mut everything = Box::pin(tap.subscribe(TapFilter::default()));
        assert!(tap.has_subscribers());

        tap.publish(event(Direction::Inbound, "GET", "a", "/ok", Some(200)));
        tap.publish(sample());

        let first = tokio::time::timeout(Duration::from_secs(10), server_errors.next())
            .await
            .expect("an event within the timeout")
            .expect("stream open");
        assert_eq!((first.status, first.path.as_str()), (Some(503), "/v1/items?page=2"));
        let seen: Vec<TapEvent> = tokio::time::timeout(Duration::from_secs(10), everything.by_ref().take(2).collect())
            .await
            .expect("both events within the timeout");
        assert_eq!(seen.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["/ok", "/v1/items?page=2"]);

        drop(server_errors);
        drop(everything);
        assert!(!tap.has_subscribers());
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_old_events_and_continues() {
        let tap = Tap::new(2);
        let mut stream = Box::pin(tap.subscribe(TapFilter::default()));
        for i in 0..10 {
            tap.publish(event(Direction::Inbound, "GET", "a", &format!("/{i}"), Some(200)));
        }
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within the timeout")
            .expect("stream open");
        assert_eq!(next.path, "/8", "the two newest events survive");
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_tap_is_dropped() {
        let tap = Tap::new(4);
        let mut stream = Box::pin(tap.subscribe(TapFilter::default()));
        drop(tap);
        assert!(stream.next().await.is_none());
    }
}
