//! The host calls of the adapter: each carries one kind of effect of a plan
//! out (a local reply, header edits, a log line, a counter, an HTTP call).

use portcullis_core::oidc::HttpCall;
use portcullis_core::pipeline::{HeaderEdit, LogLevel, LogLine, Reply, RequestHead};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::time::{Duration, UNIX_EPOCH};

/// Now, Unix milliseconds (0 if the host has no clock).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Fills `buf` from the host's random source; false if it failed.
pub fn fill_random(buf: &mut [u8]) -> bool {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_fill_bytes(buf).is_ok()
}

/// A property of the stream (`None`: not found).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Reads the request head: the header map (one host call, values as bytes:
/// the SDK's string reader panics on a value that is not UTF-8), and, when
/// `properties`, the route's app and the downstream address.
pub fn read_request_head(properties: bool) -> RequestHead {
    let raw = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
    let mut head = RequestHead::from_raw(raw);
    if properties {
        head.route_app = property(&portcullis_core::app::ROUTE_APP_PROPERTY);
        head.source_address =
            property(&["source", "address"]).and_then(|b| String::from_utf8(b).ok());
    }
    head
}

/// Sends a local reply (`prefix` names the stage in the error log line).
pub fn send(reply: &Reply, prefix: &str) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
    if let Err(e) = hostcalls::send_http_response(u32::from(reply.status), headers, body) {
        log::error!("{prefix}: cannot send a local response: {e:?}");
    }
}

/// Applies header edits to a header map.
pub fn apply(map: MapType, edits: &[HeaderEdit]) {
    for edit in edits {
        let _ = match edit {
            HeaderEdit::Remove(name) => hostcalls::set_map_value_bytes(map, name, None),
            HeaderEdit::Set(name, value) => {
                hostcalls::set_map_value_bytes(map, name, Some(value.as_slice()))
            }
            HeaderEdit::Add(name, value) => hostcalls::add_map_value_bytes(map, name, value),
        };
    }
}

/// Removes every value of the headers `remove` and replaces every value of
/// each header of `set` by that one value.
pub fn replace(map: MapType, remove: &[String], set: &[(String, String)]) {
    for name in remove {
        let _ = hostcalls::set_map_value_bytes(map, name, None);
    }
    for (name, value) in set {
        let _ = hostcalls::set_map_value_bytes(map, name, Some(value.as_bytes()));
    }
}

/// Writes the log lines of a plan.
pub fn log_lines(lines: &[LogLine]) {
    for line in lines {
        match line.level {
            LogLevel::Debug => log::debug!("{}", line.text),
            LogLevel::Info => log::info!("{}", line.text),
            LogLevel::Warn => log::warn!("{}", line.text),
            LogLevel::Error => log::error!("{}", line.text),
        }
    }
}

/// Dispatches an HTTP call; the call's token.
pub fn dispatch(call: &HttpCall) -> Result<u32, String> {
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = (!call.body.is_empty()).then_some(call.body.as_slice());
    hostcalls::dispatch_http_call(
        &call.cluster,
        headers,
        body,
        Vec::new(),
        Duration::from_millis(call.timeout_ms),
    )
    .map_err(|s| format!("{s:?}"))
}

/// The status and body of the HTTP call answer being delivered (`None`: no answer).
pub fn call_answer(num_headers: usize, body_size: usize) -> (Option<u16>, Vec<u8>) {
    if num_headers == 0 {
        return (None, Vec::new());
    }
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok());
    let body = hostcalls::get_buffer(
        proxy_wasm::types::BufferType::HttpCallResponseBody,
        0,
        body_size,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    (status, body)
}
