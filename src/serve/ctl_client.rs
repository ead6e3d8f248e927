//! The client side of the control socket (`mta-sts-policyd ctl`): one request, the lines of an
//! import streamed while the replies are read, progress lines handed to the caller, and the
//! readable rendering of a reply. Also the wire rules both sides share (line limit, the progress
//! line), so that the server module imports this one and never the reverse.

use std::path::Path;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::policy::Mode;
use crate::serve::control_dane;

/// One request or export/import line. A policy is at most 64 KiB; JSON escaping can double it.
pub const MAX_LINE: usize = 256 * 1024;

/// Writes one JSON value as a line.
pub async fn send(w: &mut (impl AsyncWriteExt + Unpin), v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    w.write_all(line.as_bytes()).await
}

/// A progress line of a long verb (`refresh --all`, `import`, `export`), sent only when the
/// request asked for it with `"progress": true`: `{"progress": {"done": N, "total": M}}`, either
/// member may be missing. Never an export line (those have a "domain") nor a final reply.
pub fn progress_line(done: Option<u64>, total: Option<u64>) -> Value {
    let mut p = serde_json::Map::new();
    if let Some(d) = done {
        p.insert("done".into(), json!(d));
    }
    if let Some(t) = total {
        p.insert("total".into(), json!(t));
    }
    json!({ "progress": p })
}

/// What the reader saw before the final reply, for a caller that shows progress.
pub enum Seen<'a> {
    /// A progress line's `{"done", "total"}` object.
    Progress(&'a Value),
    /// One more data line (an export's policy).
    Line,
}

/// Sends one request (and, for `import`, the lines of `input`) and returns every line the
/// daemon answered, parsed.
pub async fn request(
    socket: &Path,
    req: &Value,
    input: Option<Vec<String>>,
) -> Result<Vec<Value>, String> {
    request_with(socket, req, input, |_| {}).await
}

/// [`request`], handing each progress line and each data line to `seen` as it arrives. The
/// lines of `input` are written while the replies are read, so a daemon answering progress
/// during a long import never waits on a client that is still writing.
pub async fn request_with(
    socket: &Path,
    req: &Value,
    input: Option<Vec<String>>,
    mut seen: impl FnMut(Seen<'_>),
) -> Result<Vec<Value>, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (read, write) = stream.into_split();
    let req = req.clone();
    let writer = tokio::spawn(async move {
        let mut write = BufWriter::with_capacity(64 * 1024, write);
        send(&mut write, &req).await?;
        if let Some(lines) = input {
            for l in lines {
                write.write_all(l.as_bytes()).await?;
                write.write_all(b"\n").await?;
            }
            send(&mut write, &json!({"end": true})).await?;
        }
        write.flush().await?;
        // The write half is kept open until the reply is read: closing it would tell the daemon
        // that the client is gone.
        Ok::<_, std::io::Error>(write)
    });
    let mut lines = FramedRead::new(
        BufReader::new(read),
        LinesCodec::new_with_max_length(MAX_LINE),
    );
    let mut out = Vec::new();
    let mut finished = false;
    while let Some(line) = lines.next().await {
        let Ok(line) = line else {
            break;
        };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            return Err(format!("bad reply: {line:?}"));
        };
        // Every reply ends with an object that has "ok"; export lines come before it.
        if v.get("ok").is_some() {
            out.push(v);
            finished = true;
            break;
        }
        match v.get("progress") {
            Some(p) => seen(Seen::Progress(p)),
            None => {
                seen(Seen::Line);
                out.push(v);
            }
        }
    }
    // A refused peer gets its reason and the connection closed before our request is written:
    // a failed send is reported only if the daemon said nothing.
    let sent = match writer.await {
        Ok(r) => r.map(drop),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    match sent {
        _ if finished => Ok(out),
        Err(e) if out.is_empty() => Err(format!("send: {e}")),
        _ if out.is_empty() => Err("the daemon closed the connection without a reply".into()),
        _ => Ok(out),
    }
}

/// A readable rendering of a reply for the terminal.
pub fn render(verb: &str, lines: &[Value]) -> String {
    let Some(last) = lines.last() else {
        return "no reply\n".to_string();
    };
    if last["ok"].as_bool() != Some(true) {
        return format!("error: {}\n", last["error"].as_str().unwrap_or("unknown"));
    }
    let mut s = String::new();
    match verb {
        "list" => {
            // Columns as wide as their widest cell, so any domain length lines up.
            let mut rows = vec![[
                "DOMAIN".to_string(),
                "KIND".to_string(),
                "ID/REASON".to_string(),
                "EXPIRES/UNTIL".to_string(),
                "HITS".to_string(),
            ]];
            for e in last["entries"].as_array().into_iter().flatten() {
                let kind = e["mode"].as_str().or(e["kind"].as_str()).unwrap_or("");
                let id = e["id"].as_str().or(e["reason"].as_str()).unwrap_or("");
                let until = e["expires"].as_str().or(e["until"].as_str()).unwrap_or("");
                rows.push([
                    e["domain"].as_str().unwrap_or("").to_string(),
                    kind.to_string(),
                    truncate(id, 24),
                    until.to_string(),
                    e["hits"].to_string(),
                ]);
            }
            let mut width = [0usize; 5];
            for r in &rows {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for [domain, kind, id, until, hits] in &rows {
                s.push_str(&format!(
                    "{domain:<w0$}  {kind:<w1$}  {id:<w2$}  {until:<w3$}  {hits:>w4$}\n",
                    w0 = width[0],
                    w1 = width[1],
                    w2 = width[2],
                    w3 = width[3],
                    w4 = width[4],
                ));
            }
            let n = last["count"].as_u64().unwrap_or(0);
            s.push_str(&format!(
                "{n} {}\n",
                if n == 1 { "entry" } else { "entries" }
            ));
        }
        "export" => {
            for l in lines {
                s.push_str(&l.to_string());
                s.push('\n');
            }
        }
        "status" => {
            let mut v = last.clone();
            // One line says whether policies are durable; the counters follow it.
            let read_only = v
                .get_mut("journal")
                .and_then(Value::as_object_mut)
                .and_then(|j| j.remove("read_only"));
            for (k, v) in v.as_object().into_iter().flatten() {
                if k == "journal" {
                    match read_only.as_ref().and_then(Value::as_str) {
                        Some(why) => s.push_str(&format!("journal: read-only ({why})\n")),
                        None => s.push_str("journal: writable\n"),
                    }
                }
                if k != "ok" {
                    flatten(k, v, &mut s);
                }
            }
        }
        _ => flatten("", last, &mut s),
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// `key: value` lines, nested objects as dotted keys, multi-line strings indented.
fn flatten(prefix: &str, v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "ok" {
                    continue;
                }
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) if s.contains('\n') => {
            out.push_str(&format!("{prefix}:\n"));
            for l in s.lines() {
                out.push_str(&format!("    {l}\n"));
            }
        }
        Value::String(s) => out.push_str(&format!("{prefix}: {s}\n")),
        // Lists of records (a DANE state's hosts): one dotted block per element.
        Value::Array(a) if a.iter().any(Value::is_object) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect();
            out.push_str(&format!("{prefix}: {}\n", items.join(", ")));
        }
        Value::Null => out.push_str(&format!("{prefix}: -\n")),
        other => out.push_str(&format!("{prefix}: {other}\n")),
    }
}

/// Mode names accepted by `list --mode`: policy modes, negative entries, DANE levels.
pub fn mode_names() -> [&'static str; 6] {
    [
        Mode::Enforce.as_str(),
        Mode::Testing.as_str(),
        Mode::None.as_str(),
        "negative",
        control_dane::MODES[0],
        control_dane::MODES[1],
    ]
}
