//! The host side of the proxy-wasm ABI 0.2.1 (and the few WASI calls a
//! `wasm32-wasip1` module makes), implemented on a per-`Store` [`HostState`].

use crate::state::{HostState, HttpCall, LogEntry, Metric, MetricKind};
use wasmtime::{bail, format_err as anyhow, Result};
use wasmtime::{Caller, Extern, Linker, Memory};

/// Status codes of the ABI.
pub(crate) mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
}

/// Header map types of the ABI.
pub(crate) mod map_type {
    pub const REQUEST_HEADERS: i32 = 0;
    pub const REQUEST_TRAILERS: i32 = 1;
    pub const RESPONSE_HEADERS: i32 = 2;
    pub const RESPONSE_TRAILERS: i32 = 3;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// Buffer types of the ABI.
pub(crate) mod buffer_type {
    pub const REQUEST_BODY: i32 = 0;
    pub const RESPONSE_BODY: i32 = 1;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

fn memory(caller: &mut Caller<'_, HostState>) -> Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => bail!("module exports no memory"),
    }
}

fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let mem = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = mem.data(&caller);
    data.get(ptr..ptr.saturating_add(len))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| anyhow!("out-of-bounds read at {ptr}+{len}"))
}

fn read_string(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<()> {
    let mem = memory(caller)?;
    mem.write(caller, ptr as u32 as usize, bytes)
        .map_err(|e| anyhow!("out-of-bounds write at {ptr}: {e}"))
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into guest memory allocated by the module, and writes the
/// pointer and size to `ret_ptr` / `ret_size`.
fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_size: i32,
) -> Result<i32> {
    let alloc = caller
        .get_export("proxy_on_memory_allocate")
        .or_else(|| caller.get_export("malloc"))
        .and_then(Extern::into_func)
        .ok_or_else(|| anyhow!("module exports no allocator"))?
        .typed::<i32, i32>(&caller)?;
    let len = i32::try_from(bytes.len())?;
    let ptr = alloc.call(&mut *caller, len)?;
    if ptr == 0 && len != 0 {
        bail!("guest allocation of {len} bytes failed");
    }
    write(caller, ptr, bytes)?;
    write_u32(caller, ret_ptr, ptr as u32)?;
    write_u32(caller, ret_size, len as u32)?;
    Ok(status::OK)
}

/// Serialises header pairs the way the ABI does: count, (key len, value len)*, then
/// each key and value followed by a NUL byte.
pub(crate) fn serialize_pairs(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_pairs`].
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let u32_at = |at: usize| -> Result<usize> {
        let b = bytes
            .get(at..at + 4)
            .ok_or_else(|| anyhow!("truncated header map"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in sizes {
        let k = bytes
            .get(at..at + kl)
            .ok_or_else(|| anyhow!("truncated header map"))?;
        at += kl + 1;
        let v = bytes
            .get(at..at + vl)
            .ok_or_else(|| anyhow!("truncated header map"))?;
        at += vl + 1;
        out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
    }
    Ok(out)
}

/// Registers every host function on `linker`.
pub(crate) fn link(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> Result<i32> {
            let message = read_string(&mut c, ptr, len)?;
            let context_id = c.data().effective_context;
            c.data_mut().logs.push(LogEntry {
                level: level as u32,
                context_id,
                message,
            });
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Caller<'_, HostState>, ret: i32| -> Result<i32> {
            let level = c.data().log_level;
            write_u32(&mut c, ret, level)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, ret: i32| -> Result<i32> {
            let now = c.data().now_nanos;
            write(&mut c, ret, &now.to_le_bytes())?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, HostState>, period: i32| -> Result<i32> {
            c.data_mut().tick_period_ms = period as u32;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         buffer: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> Result<i32> {
            let Some(data) = c.data().buffer(buffer) else {
                return Ok(status::NOT_FOUND);
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start > data.len() {
                return Ok(status::BAD_ARGUMENT);
            }
            let end = start.saturating_add(max).min(data.len());
            let slice = data[start..end].to_vec();
            if slice.is_empty() {
                return Ok(status::NOT_FOUND);
            }
            return_bytes(&mut c, &slice, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         buffer: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32|
         -> Result<i32> {
            let value = read(&mut c, ptr, len)?;
            let Some(data) = c.data_mut().buffer_mut(buffer) else {
                return Ok(status::NOT_FOUND);
            };
            let start = (start as u32 as usize).min(data.len());
            let end = start.saturating_add(size as u32 as usize).min(data.len());
            data.splice(start..end, value);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let Some(pairs) = c.data().header_map(map) else {
                return Ok(status::NOT_FOUND);
            };
            let bytes = serialize_pairs(pairs);
            return_bytes(&mut c, &bytes, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, ptr: i32, len: i32| -> Result<i32> {
            let pairs = deserialize_pairs(&read(&mut c, ptr, len)?)?;
            let Some(target) = c.data_mut().header_map_mut(map) else {
                return Ok(status::NOT_FOUND);
            };
            *target = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>,
         map: i32,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> Result<i32> {
            let key = read_string(&mut c, kp, kl)?.to_ascii_lowercase();
            let Some(pairs) = c.data().header_map(map) else {
                return Ok(status::NOT_FOUND);
            };
            // Like Envoy: several values of one header are joined with a comma.
            let values: Vec<&Vec<u8>> = pairs
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .collect();
            if values.is_empty() {
                return Ok(status::NOT_FOUND);
            }
            let joined = values
                .iter()
                .map(|v| v.as_slice())
                .collect::<Vec<_>>()
                .join(&b","[..]);
            return_bytes(&mut c, &joined, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>,
         map: i32,
         kp: i32,
         kl: i32,
         vp: i32,
         vl: i32|
         -> Result<i32> {
            let key = read_string(&mut c, kp, kl)?.to_ascii_lowercase();
            let value = read(&mut c, vp, vl)?;
            let Some(pairs) = c.data_mut().header_map_mut(map) else {
                return Ok(status::NOT_FOUND);
            };
            match pairs.iter().position(|(k, _)| *k == key) {
                Some(first) => {
                    pairs[first].1 = value;
                    let mut i = 0;
                    pairs.retain(|(k, _)| {
                        i += 1;
                        i - 1 == first || *k != key
                    });
                }
                None => pairs.push((key, value)),
            }
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32| -> Result<i32> {
            let key = read_string(&mut c, kp, kl)?.to_ascii_lowercase();
            let Some(pairs) = c.data_mut().header_map_mut(map) else {
                return Ok(status::NOT_FOUND);
            };
            pairs.retain(|(k, _)| *k != key);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>,
         map: i32,
         kp: i32,
         kl: i32,
         vp: i32,
         vl: i32|
         -> Result<i32> {
            let key = read_string(&mut c, kp, kl)?.to_ascii_lowercase();
            let value = read(&mut c, vp, vl)?;
            let Some(pairs) = c.data_mut().header_map_mut(map) else {
                return Ok(status::NOT_FOUND);
            };
            pairs.push((key, value));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>,
         pp: i32,
         pl: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> Result<i32> {
            let raw = read(&mut c, pp, pl)?;
            let path: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            match c.data().property(&path) {
                Some(value) => return_bytes(&mut c, &value, ret_ptr, ret_size),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_, HostState>, pp: i32, pl: i32, vp: i32, vl: i32| -> Result<i32> {
            let raw = read(&mut c, pp, pl)?;
            let path: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            let value = read(&mut c, vp, vl)?;
            c.data_mut().set_property(&path, value);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_size: i32,
         ret_cas: i32|
         -> Result<i32> {
            let key = read_string(&mut c, kp, kl)?;
            let entry = c.data().shared.get(&key);
            match entry {
                Some((value, cas)) => {
                    write_u32(&mut c, ret_cas, cas)?;
                    return_bytes(&mut c, &value, ret_ptr, ret_size)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         vp: i32,
         vl: i32,
         cas: i32|
         -> Result<i32> {
            let key = read_string(&mut c, kp, kl)?;
            let value = read(&mut c, vp, vl)?;
            if c.data().shared.set(&key, value, cas as u32) {
                Ok(status::OK)
            } else {
                Ok(status::CAS_MISMATCH)
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, np: i32, nl: i32, ret: i32| -> Result<i32> {
            let name = read_string(&mut c, np, nl)?;
            let id = c.data().shared.register_queue(&name);
            write_u32(&mut c, ret, id)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, HostState>,
         _vp: i32,
         _vl: i32,
         np: i32,
         nl: i32,
         ret: i32|
         -> Result<i32> {
            let name = read_string(&mut c, np, nl)?;
            match c.data().shared.resolve_queue(&name) {
                Some(id) => {
                    write_u32(&mut c, ret, id)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, HostState>, id: i32, vp: i32, vl: i32| -> Result<i32> {
            let value = read(&mut c, vp, vl)?;
            if c.data().shared.enqueue(id as u32, value) {
                Ok(status::OK)
            } else {
                Ok(status::NOT_FOUND)
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, HostState>, id: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            match c.data().shared.dequeue(id as u32) {
                None => Ok(status::NOT_FOUND),
                Some(None) => Ok(status::EMPTY),
                Some(Some(value)) => return_bytes(&mut c, &value, ret_ptr, ret_size),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Caller<'_, HostState>, stream_type: i32| -> Result<i32> {
            let ctx = c.data().effective_context;
            c.data_mut().continue_stream(ctx, stream_type);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Caller<'_, HostState>, _stream_type: i32| -> Result<i32> {
            let ctx = c.data().effective_context;
            if let Some(s) = c.data_mut().streams.get_mut(&ctx) {
                s.closed = true;
            }
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         status_code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         _grpc: i32|
         -> Result<i32> {
            let details = read_string(&mut c, dp, dl)?;
            let body = read(&mut c, bp, bl)?;
            let headers = deserialize_pairs(&read(&mut c, hp, hl)?)?;
            let ctx = c.data().effective_context;
            c.data_mut()
                .send_local_response(ctx, status_code as u32, details, headers, body)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         ret: i32|
         -> Result<i32> {
            let upstream = read_string(&mut c, up, ul)?;
            let headers = deserialize_pairs(&read(&mut c, hp, hl)?)?;
            let body = read(&mut c, bp, bl)?;
            let trailers = deserialize_pairs(&read(&mut c, tp, tl)?)?;
            let state = c.data_mut();
            if !state.known_clusters.is_empty() && !state.known_clusters.contains(&upstream) {
                return Ok(status::BAD_ARGUMENT);
            }
            state.next_token += 1;
            let token = state.next_token;
            let context_id = state.effective_context;
            state.http_calls.push(HttpCall {
                token,
                context_id,
                upstream,
                headers,
                body,
                trailers,
                timeout_ms: timeout as u32,
                answered: false,
            });
            write_u32(&mut c, ret, token)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Caller<'_, HostState>, ret_code: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let (code, message) = c.data().last_status.clone();
            write_u32(&mut c, ret_code, code)?;
            return_bytes(&mut c, message.as_bytes(), ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, HostState>, ctx: i32| -> Result<i32> {
            c.data_mut().effective_context = ctx as u32;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_done",
        |mut c: Caller<'_, HostState>| -> Result<i32> {
            c.data_mut().done_called = true;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, kind: i32, np: i32, nl: i32, ret: i32| -> Result<i32> {
            let name = read_string(&mut c, np, nl)?;
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(status::BAD_ARGUMENT),
            };
            let state = c.data_mut();
            let id = match state.metrics.iter().position(|m| m.name == name) {
                Some(i) => i as u32,
                None => {
                    state.metrics.push(Metric {
                        name,
                        kind,
                        value: 0,
                        samples: Vec::new(),
                    });
                    (state.metrics.len() - 1) as u32
                }
            };
            write_u32(&mut c, ret, id)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, offset: i64| -> Result<i32> {
            match c.data_mut().metrics.get_mut(id as u32 as usize) {
                Some(m) => {
                    m.value = m.value.saturating_add_signed(offset);
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, value: i64| -> Result<i32> {
            match c.data_mut().metrics.get_mut(id as u32 as usize) {
                Some(m) => {
                    if m.kind == MetricKind::Histogram {
                        m.samples.push(value as u64);
                    } else {
                        m.value = value as u64;
                    }
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Caller<'_, HostState>, id: i32, ret: i32| -> Result<i32> {
            let value = match c.data().metrics.get(id as u32 as usize) {
                Some(m) => m.value,
                None => return Ok(status::NOT_FOUND),
            };
            write(&mut c, ret, &value.to_le_bytes())?;
            Ok(status::OK)
        },
    )?;
    link_wasi(linker)
}

/// The WASI preview-1 calls that Rust's `wasm32-wasip1` standard library and
/// `getrandom` make. Environment and arguments are empty; stdout/stderr are
/// captured as log lines; the clock is the host's settable clock.
fn link_wasi(linker: &mut Linker<HostState>) -> Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: Caller<'_, HostState>, count: i32, size: i32| -> Result<i32> {
            write_u32(&mut c, count, 0)?;
            write_u32(&mut c, size, 0)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_get",
        |_c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 { 0 },
    )?;
    linker.func_wrap(
        WASI,
        "args_sizes_get",
        |mut c: Caller<'_, HostState>, count: i32, size: i32| -> Result<i32> {
            write_u32(&mut c, count, 0)?;
            write_u32(&mut c, size, 0)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_get",
        |_c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 { 0 },
    )?;
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, ret: i32| -> Result<i32> {
            let mut written = 0u32;
            let mut text = Vec::new();
            for i in 0..n {
                let iov = read(&mut c, iovs + i * 8, 8)?;
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                text.extend(read(&mut c, ptr, len)?);
                written += len as u32;
            }
            let context_id = c.data().effective_context;
            c.data_mut().logs.push(LogEntry {
                level: if fd == 2 { 4 } else { 2 },
                context_id,
                message: String::from_utf8_lossy(&text).trim_end().to_string(),
            });
            write_u32(&mut c, ret, written)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: Caller<'_, HostState>, _id: i32, _precision: i64, ret: i32| -> Result<i32> {
            let now = c.data().now_nanos;
            write(&mut c, ret, &now.to_le_bytes())?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut c: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32> {
            let bytes = c.data_mut().random_bytes(len as u32 as usize);
            write(&mut c, ptr, &bytes)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_c: Caller<'_, HostState>, code: i32| -> Result<()> {
            bail!("module called proc_exit({code})")
        },
    )?;
    linker.func_wrap(WASI, "sched_yield", |_c: Caller<'_, HostState>| -> i32 {
        0
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_round_trip() {
        let pairs = vec![
            (":path".to_string(), b"/x".to_vec()),
            ("cookie".to_string(), b"a=1; b=2".to_vec()),
            ("empty".to_string(), Vec::new()),
        ];
        assert_eq!(deserialize_pairs(&serialize_pairs(&pairs)).unwrap(), pairs);
        assert!(deserialize_pairs(&[]).unwrap().is_empty());
        assert!(deserialize_pairs(&[1, 0, 0, 0, 5]).is_err());
    }
}
