//! What the translating adapters share: reading OpenAI message content, building turns, and
//! writing OpenAI stream chunks (the role chunk held back until content, the usage chunk, the
//! end). Pure.

use serde_json::{json, Value};

/// Options the stream translators need from the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOpts {
    pub include_usage: bool,
}

/// An error a provider reported inside a stream (Anthropic's `event: error`, Gemini's error
/// object, a Bedrock exception frame), or an event detour cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InBandError {
    /// The provider's error type (`overloaded_error`, `UNAVAILABLE`, `throttlingException`, ...).
    pub kind: String,
    pub message: String,
}

/// The text of an OpenAI `content` that must be plain text (system, developer and tool
/// messages): a string, null, or text parts only.
pub(crate) fn text_of(content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(p
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()),
                other => Err(format!(
                    "content part type {} is not allowed here",
                    other.unwrap_or("(none)")
                )),
            })
            .collect(),
        _ => Err("content must be a string or an array of parts".into()),
    }
}

/// Add a turn of `role` with `items` under `key` (Anthropic `content`, Gemini `parts`), merged
/// into the previous turn when it has the same role: both APIs want the roles to alternate.
pub(crate) fn push_turn(turns: &mut Vec<Value>, key: &str, role: &str, mut items: Vec<Value>) {
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(arr) = last.get_mut(key).and_then(Value::as_array_mut) {
                arr.append(&mut items);
                return;
            }
        }
    }
    turns.push(json!({"role": role, key: items}));
}

/// A `data:` URL's media type and base64 payload; `Ok(None)` for any other URL.
pub(crate) fn data_url(url: &str) -> Result<Option<(&str, &str)>, String> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(None);
    };
    let (meta, data) = rest.split_once(',').ok_or("malformed data URL")?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or("data URLs must be base64")?;
    Ok(Some((mime, data)))
}

/// An assistant tool call's `function.arguments` string, parsed (empty → `{}`).
pub(crate) fn call_arguments(tool_call: &Value) -> Result<Value, String> {
    let args = tool_call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    if args.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(args).map_err(|_| "tool call arguments are not valid JSON".into())
}

/// The end of a translated stream: the usage chunk when the client asked for it, then
/// `[DONE]`.
pub(crate) fn push_stream_end(
    out: &mut String,
    include_usage: bool,
    (id, created, model): (&str, u64, &str),
    (input, output): (u64, u64),
) {
    if include_usage {
        out.push_str(&usage_event((id, created, model), (input, output), false));
    }
    out.push_str("data: [DONE]\n\n");
}

/// A usage chunk in OpenAI's shape (`choices` empty) as an SSE event, the one before `[DONE]`.
/// An estimate of detour's own says so: `usage.detour_estimated` is `true`.
pub(crate) fn usage_event(
    (id, created, model): (&str, u64, &str),
    (input, output): (u64, u64),
    estimated: bool,
) -> String {
    let mut usage = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
    if estimated {
        usage["detour_estimated"] = true.into();
    }
    let u = json!({"id": id, "object": "chat.completion.chunk", "created": created,
        "model": model, "choices": [], "usage": usage});
    format!("data: {u}\n\n")
}

/// Append `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    // A str always serializes; the fallback keeps the output valid JSON regardless.
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

/// Writes the OpenAI `chat.completion.chunk` events of a translated stream.
///
/// Every chunk of a stream shares its beginning (`id`, `created`, `model`), so that part is built
/// once. The role chunk is held back until the first chunk with content (or a finish), so that
/// nothing reaches the client, and nothing is committed, before the answer really starts.
#[derive(Debug, Default)]
pub(crate) struct ChunkWriter {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":`
    prefix: String,
    role_sent: bool,
}

impl ChunkWriter {
    pub(crate) fn new(id: &str, created: u64, model: &str) -> Self {
        let mut w = ChunkWriter::default();
        w.set_identity(id, created, model);
        w
    }

    /// Set what every following chunk says of the stream (when the upstream names it).
    pub(crate) fn set_identity(&mut self, id: &str, created: u64, model: &str) {
        let mut p = String::with_capacity(160);
        p.push_str("data: {\"id\":");
        push_json_str(&mut p, id);
        p.push_str(",\"object\":\"chat.completion.chunk\",\"created\":");
        p.push_str(&created.to_string());
        p.push_str(",\"model\":");
        push_json_str(&mut p, model);
        p.push_str(",\"choices\":[{\"index\":0,\"delta\":");
        self.prefix = p;
    }

    pub(crate) fn role_sent(&self) -> bool {
        self.role_sent
    }

    /// Append one chunk (`delta` is already JSON), preceded by the role chunk the first time.
    pub(crate) fn chunk(&mut self, out: &mut String, delta: &str, finish: Option<&str>) {
        if !self.role_sent {
            self.role_sent = true;
            self.chunk(out, r#"{"role":"assistant","content":""}"#, None);
        }
        out.push_str(&self.prefix);
        out.push_str(delta);
        out.push_str(",\"finish_reason\":");
        match finish {
            Some(f) => {
                out.push('"');
                out.push_str(f);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str("}]}\n\n");
    }
}
