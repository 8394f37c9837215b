//! AWS Bedrock Converse / ConverseStream ⇄ OpenAI chat completions. Pure: values in, values
//! out (signing takes the time as an argument).
//!
//! Request: OpenAI chat request → `POST /model/{modelId}/converse` (or `/converse-stream`) body,
//! as botocore's `bedrock-runtime` service model defines it. Response: `ConverseResponse` →
//! `chat.completion`. Stream: the binary AWS event-stream framing (decoded by the AWS-maintained
//! `aws-smithy-eventstream`) → `chat.completion.chunk` SSE ending in `[DONE]`. Exception frames
//! become in-band errors the engine classifies like statuses. Signing: SigV4 by `aws-sigv4`.
//!
//! Parameter rules (README, "Providers"): system messages → `system` text blocks; text parts →
//! `text` blocks; image parts → `image` blocks (data URLs only; png, jpeg, gif, webp); assistant
//! `tool_calls` → `toolUse` blocks; `tool` messages → `toolResult` blocks in a user turn (a JSON
//! object result as `json`, anything else as `text`); `tools` → `toolConfig.tools[].toolSpec`;
//! `tool_choice` `auto`/`required`/named → `auto`/`any`/`tool`; `max_completion_tokens` /
//! `max_tokens` → `inferenceConfig.maxTokens` (else the catalog's `max-output-tokens`);
//! `temperature`, `top_p`, `stop` → `inferenceConfig`. Refused (400): `n` > 1, `logprobs`,
//! `response_format` `json_object`/`json_schema`, `tool_choice: none` when the conversation
//! already has tool calls (Converse has no "none"; without them the tools are left out),
//! non-data image URLs, audio/file parts. Dropped: `user`, `presence_penalty`,
//! `frequency_penalty`, `seed`, `logit_bias`, `parallel_tool_calls`, `store`, unknown fields.

use super::common::{
    call_arguments, data_url, push_json_str, push_stream_end, push_turn, text_of, ChunkWriter,
};
use super::common::{InBandError, StreamOpts};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::BytesMut;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::time::SystemTime;

/// The request path for `model_id` below the provider's base path. The id is one URI label:
/// everything but unreserved characters is percent-encoded (`:` → `%3A`, `/` → `%2F`), as
/// botocore renders it.
pub fn path(base_path: &str, model_id: &str, stream: bool) -> String {
    let mut p = String::with_capacity(base_path.len() + model_id.len() + 32);
    p.push_str(base_path);
    p.push_str("/model/");
    // One path label, as botocore renders it: only the unreserved bytes stay as they are.
    p.push_str(&crate::text::query_value(model_id));
    p.push_str(if stream {
        "/converse-stream"
    } else {
        "/converse"
    });
    p
}

/// AWS Bedrock Converse: `{base}/model/{id}/converse` (streams `/converse-stream`), signed with
/// SigV4 (service `bedrock`), or a Bedrock API key as a bearer token.
#[derive(Debug)]
pub struct Bedrock {
    region: String,
}

pub(super) fn build(
    p: &crate::config::ProviderConfig,
    env: super::Env<'_>,
) -> Result<super::Built, crate::config::ConfigError> {
    let region = p
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| {
            p.error(
                "region",
                "a bedrock provider needs a region (or AWS_REGION in the environment)",
            )
        })?;
    if !region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(p.error("region", format!("`{region}` is not a region name")));
    }
    let default_url = format!("https://bedrock-runtime.{region}.amazonaws.com");
    let credentials = match &p.api_key_env {
        Some(_) => super::Credentials::from_env(p, env),
        None => aws_from_env(env),
    };
    Ok(super::Built {
        endpoint: super::endpoint(p, Some(default_url))?,
        adapter: Box::new(Bedrock { region }),
        credentials,
    })
}

/// SigV4 credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
fn aws_from_env(env: super::Env<'_>) -> super::Credentials {
    let var = |n: &str| env(n).filter(|v| !v.trim().is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => super::Credentials::Aws(AwsCredentials::new(
            id.trim().to_string(),
            crate::config::Secret::new(secret.trim().to_string()),
            var("AWS_SESSION_TOKEN").map(|t| crate::config::Secret::new(t.trim().to_string())),
        )),
        (None, _) => super::Credentials::Missing {
            env: "AWS_ACCESS_KEY_ID".into(),
        },
        (_, None) => super::Credentials::Missing {
            env: "AWS_SECRET_ACCESS_KEY".into(),
        },
    }
}

impl super::Adapter for Bedrock {
    fn prepare(&self, call: &super::Call<'_>) -> Result<super::Prepared, String> {
        let (body, opts) = request(call.req.tree()?, call.route.max_output_tokens)?;
        Ok(super::Prepared {
            path: path(call.base_path, call.route.id, call.stream),
            body: body.into(),
            wire: super::Wire::Bedrock(opts, call.route.id.to_string()),
        })
    }

    fn authorize(
        &self,
        h: &mut pingora_http::RequestHeader,
        auth: &super::Auth<'_>,
    ) -> pingora_core::Result<()> {
        match auth {
            // A Bedrock API key.
            super::Auth::Key(k) | super::Auth::Token(k) => super::bearer(h, k),
            super::Auth::None | super::Auth::Aws(_) => Ok(()),
        }
    }

    /// SigV4 over host, content-type and the body; the signer adds `x-amz-date` (and the
    /// session token).
    fn sign(
        &self,
        h: &mut pingora_http::RequestHeader,
        s: &super::Signing<'_>,
    ) -> Result<(), String> {
        let super::Auth::Aws(creds) = s.auth else {
            return Ok(());
        };
        let scheme = if s.endpoint.tls { "https" } else { "http" };
        let authority = s.endpoint.authority.as_str();
        let url = format!("{scheme}://{authority}{}", s.path);
        let headers = [("host", authority), ("content-type", "application/json")];
        let signed = sign(
            "POST",
            &url,
            &headers,
            s.body,
            creds,
            &self.region,
            SystemTime::now(),
        )?;
        for (name, value) in signed {
            h.insert_header(name, value).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// AWS credentials from the standard environment variables, held as the signer's identity,
/// built once at start-up.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    secret_access_key: crate::config::Secret,
    session_token: Option<crate::config::Secret>,
    identity: aws_smithy_runtime_api::client::identity::Identity,
}

impl AwsCredentials {
    pub fn new(
        access_key_id: String,
        secret_access_key: crate::config::Secret,
        session_token: Option<crate::config::Secret>,
    ) -> Self {
        let identity = aws_credential_types::Credentials::new(
            access_key_id.clone(),
            secret_access_key.expose().to_string(),
            session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "detour-env",
        )
        .into();
        AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token,
            identity,
        }
    }

    pub fn has_session_token(&self) -> bool {
        self.session_token.is_some()
    }

    /// Everything here that must never reach a client or a log (the key id too: AWS error
    /// texts quote it).
    pub fn to_mask(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.access_key_id.as_str()),
            Some(self.secret_access_key.expose()),
        ]
        .into_iter()
        .chain(std::iter::once(
            self.session_token.as_ref().map(|t| t.expose()),
        ))
        .flatten()
    }
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCredentials(***)")
    }
}

/// SigV4 headers for one request (`x-amz-date`, `authorization`, and `x-amz-security-token`
/// with a session token), signed for service `bedrock` in `region`. `headers` are the request's
/// headers to sign (host and content-type); the URL is the full request URL.
pub fn sign(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: &AwsCredentials,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{
        sign as sigv4_sign, SignableBody, SignableRequest, SigningSettings,
    };
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&creds.identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sigv4_sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn image_block(url: &str) -> Result<Value, String> {
    let (mime, data) = data_url(url)?.ok_or("bedrock takes images as data URLs only")?;
    let format = match mime {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => return Err(format!("bedrock does not take {other} images")),
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// OpenAI `content` → Converse content blocks (blank text is left out: Converse refuses it).
fn blocks_of(content: &Value) -> Result<Vec<Value>, String> {
    match content {
        Value::String(s) if s.trim().is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Null => Ok(vec![]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.trim().is_empty() {
                            out.push(json!({"text": t}));
                        }
                    }
                    Some("image_url") => out.push(image_block(
                        p.pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .ok_or("image_url part without a url")?,
                    )?),
                    other => {
                        return Err(format!(
                            "content part type {} is not supported by bedrock",
                            other.unwrap_or("(none)")
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err("content must be a string or an array of parts".into()),
    }
}

/// OpenAI chat request → Converse request body. `max_tokens` is sent when the client
/// gives none (the catalog's output limit), if known.
pub fn request(value: &Value, max_tokens: Option<u32>) -> Result<(Vec<u8>, StreamOpts), String> {
    let req = value.as_object().ok_or("the request must be an object")?;
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut has_tool_blocks = false;
    let msgs = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be an array")?;
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let at = |e: String| format!("messages[{i}]: {e}");
        match role {
            "system" | "developer" => {
                let t = text_of(content).map_err(at)?;
                if !t.trim().is_empty() {
                    system.push(json!({"text": t}));
                }
            }
            "user" => push_turn(
                &mut messages,
                "content",
                "user",
                blocks_of(content).map_err(at)?,
            ),
            "assistant" => {
                let mut blocks = blocks_of(content).map_err(at)?;
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let input = call_arguments(tc).map_err(at)?;
                    has_tool_blocks = true;
                    blocks.push(json!({"toolUse": {
                        "toolUseId": tc.get("id").cloned().unwrap_or(Value::Null),
                        "name": tc.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": input}}));
                }
                push_turn(&mut messages, "content", "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| at("a tool message needs tool_call_id".into()))?;
                let text = text_of(content).map_err(at)?;
                let result = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => json!({"json": v}),
                    _ => json!({"text": text}),
                };
                has_tool_blocks = true;
                push_turn(
                    &mut messages,
                    "content",
                    "user",
                    vec![json!({"toolResult": {"toolUseId": id, "content": [result]}})],
                );
            }
            other => return Err(at(format!("unknown role `{other}`"))),
        }
    }
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("bedrock cannot return n > 1 choices".into());
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err("bedrock does not return logprobs".into());
    }
    if let Some(f @ ("json_schema" | "json_object")) = value
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        return Err(format!(
            "bedrock Converse has no JSON mode (response_format {f})"
        ));
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    let max = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .or(max_tokens.map(u64::from));
    if let Some(m) = max {
        inference.insert("maxTokens".into(), json!(m));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = req.get(from).filter(|v| v.is_number()) {
            inference.insert(to.into(), v.clone());
        }
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    let tools: Vec<Value> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let mut spec = Map::new();
            spec.insert(
                "name".into(),
                t.pointer("/function/name").cloned().unwrap_or(Value::Null),
            );
            if let Some(d) = t
                .pointer("/function/description")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                spec.insert("description".into(), json!(d));
            }
            let schema = t
                .pointer("/function/parameters")
                .cloned()
                .unwrap_or(json!({"type": "object", "properties": {}}));
            spec.insert("inputSchema".into(), json!({"json": schema}));
            json!({"toolSpec": spec})
        })
        .collect();
    let choice = match req.get("tool_choice") {
        None => Some(None),
        Some(Value::String(s)) if s == "auto" => Some(Some(json!({"auto": {}}))),
        Some(Value::String(s)) if s == "required" => Some(Some(json!({"any": {}}))),
        Some(Value::String(s)) if s == "none" => None,
        Some(tc @ Value::Object(_)) => Some(
            tc.pointer("/function/name")
                .map(|n| json!({"tool": {"name": n}})),
        ),
        Some(_) => Some(None),
    };
    match choice {
        // tool_choice none: Converse cannot forbid calls, so the tools are left out, which it
        // only accepts while the conversation has no tool blocks.
        None if has_tool_blocks => {
            return Err(
                "bedrock Converse has no tool_choice none for a conversation with tool calls"
                    .into(),
            )
        }
        None => {}
        Some(choice) if !tools.is_empty() => {
            let mut cfg = Map::new();
            cfg.insert("tools".into(), Value::Array(tools));
            if let Some(c) = choice {
                cfg.insert("toolChoice".into(), c);
            }
            out.insert("toolConfig".into(), Value::Object(cfg));
        }
        Some(_) => {}
    }
    let opts = StreamOpts {
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    Ok((
        serde_json::to_vec(&Value::Object(out)).map_err(|e| e.to_string())?,
        opts,
    ))
}

/// Converse `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Converse `usage` → (prompt tokens, completion tokens); cache reads and writes are input.
fn token_usage(u: Option<&Value>) -> (u64, u64) {
    let n = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (
        n("inputTokens") + n("cacheReadInputTokens") + n("cacheWriteInputTokens"),
        n("outputTokens"),
    )
}

/// `ConverseResponse` JSON → OpenAI `chat.completion` JSON.
pub fn response(body: &[u8], model_id: &str, created: u64) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tu) = block.get("toolUse") {
            calls.push(json!({
                "id": tu.get("toolUseId").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": tu.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": serde_json::to_string(tu.get("input").unwrap_or(&json!({}))).unwrap_or_default(),
                }
            }));
        }
    }
    let stop = v
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let (i, o) = token_usage(v.get("usage"));
    let out = json!({
        "id": "chatcmpl-bedrock",
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stop)}],
        "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o},
    });
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// Bedrock error body (`{"message": …}`; the type is in `x-amzn-ErrorType`) → OpenAI error JSON.
pub fn error_body(body: &[u8], status: u16) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("the provider returned an error");
    let kind = if (400..500).contains(&status) {
        "invalid_request_error"
    } else {
        "api_error"
    };
    serde_json::to_vec(
        &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
    .unwrap_or_default()
}

fn header_str<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The stream events detour reads, borrowed where it can be.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    #[serde(default)]
    content_block_index: Option<usize>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    start: Option<Start>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delta<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_use: Option<ToolDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct ToolDelta<'a> {
    #[serde(default, borrow)]
    input: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Start {
    #[serde(default)]
    tool_use: Option<ToolStart>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolStart {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
}

/// ConverseStream (AWS event-stream frames) → OpenAI chunk SSE. The answer is whole once
/// `messageStop` arrived and the upstream ended (`metadata`, with the usage, comes between):
/// [`StreamTranslator::finish`] then adds the usage chunk and `[DONE]`.
#[derive(Debug)]
pub struct StreamTranslator {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    opts: StreamOpts,
    created: u64,
    model: String,
    writer: ChunkWriter,
    /// contentBlockIndex → OpenAI tool-call index.
    tool_blocks: Vec<(usize, usize)>,
    finished: bool,
    usage: (u64, u64),
}

impl StreamTranslator {
    pub fn new(opts: StreamOpts, model_id: &str, created: u64) -> Self {
        StreamTranslator {
            buf: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            opts,
            created,
            model: model_id.to_string(),
            writer: ChunkWriter::new("chatcmpl-bedrock", created, model_id),
            tool_blocks: Vec::new(),
            finished: false,
            usage: (0, 0),
        }
    }

    /// Bytes of a frame not yet whole.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, InBandError> {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            let frame = self
                .decoder
                .decode_frame(&mut self.buf)
                .map_err(|e| InBandError {
                    kind: "invalid_event".into(),
                    message: format!("the provider sent a malformed event-stream frame: {e}"),
                })?;
            let DecodedFrame::Complete(msg) = frame else {
                break;
            };
            self.event(&msg, &mut out)?;
        }
        Ok(out.into_bytes())
    }

    fn event(&mut self, msg: &Message, out: &mut String) -> Result<(), InBandError> {
        let invalid = || InBandError {
            kind: "invalid_event".into(),
            message: "the provider sent an event that is not JSON".into(),
        };
        let ev: Event<'_> = serde_json::from_slice(msg.payload()).map_err(|_| invalid())?;
        match header_str(msg, ":message-type") {
            Some("event") => {}
            Some("exception") | Some("error") => {
                return Err(InBandError {
                    kind: header_str(msg, ":exception-type")
                        .or_else(|| header_str(msg, ":error-code"))
                        .unwrap_or("exception")
                        .to_string(),
                    message: ev
                        .message
                        .map(Cow::into_owned)
                        .or_else(|| header_str(msg, ":error-message").map(str::to_string))
                        .unwrap_or_else(|| "error".into()),
                })
            }
            _ => return Err(invalid()),
        }
        match header_str(msg, ":event-type") {
            Some("contentBlockStart") => {
                if let Some(tu) = ev.start.and_then(|s| s.tool_use) {
                    let n = self.tool_blocks.len();
                    self.tool_blocks
                        .push((ev.content_block_index.unwrap_or(usize::MAX), n));
                    let delta = json!({"tool_calls": [{"index": n, "id": tu.tool_use_id, "type": "function",
                        "function": {"name": tu.name, "arguments": ""}}]});
                    self.writer.chunk(out, &delta.to_string(), None);
                }
            }
            Some("contentBlockDelta") => {
                let Some(d) = ev.delta else { return Ok(()) };
                if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                    let mut delta = String::with_capacity(t.len() + 16);
                    delta.push_str("{\"content\":");
                    push_json_str(&mut delta, &t);
                    delta.push('}');
                    self.writer.chunk(out, &delta, None);
                } else if let Some(input) = d.tool_use.and_then(|t| t.input) {
                    let block = ev.content_block_index.unwrap_or(usize::MAX);
                    let n = self
                        .tool_blocks
                        .iter()
                        .find(|(b, _)| *b == block)
                        .map(|(_, n)| *n)
                        .unwrap_or(0);
                    let mut delta = String::with_capacity(input.len() + 64);
                    delta.push_str("{\"tool_calls\":[{\"index\":");
                    delta.push_str(&n.to_string());
                    delta.push_str(",\"function\":{\"arguments\":");
                    push_json_str(&mut delta, &input);
                    delta.push_str("}}]}");
                    self.writer.chunk(out, &delta, None);
                }
            }
            Some("messageStop") => {
                let reason = finish_reason(ev.stop_reason.as_deref().unwrap_or("end_turn"));
                self.writer.chunk(out, "{}", Some(reason));
                self.finished = true;
            }
            Some("metadata") => {
                self.usage = token_usage(ev.usage.as_ref());
            }
            // messageStart (the role chunk waits for content), contentBlockStop, and events
            // this version does not know.
            _ => {}
        }
        Ok(())
    }

    /// At the upstream's clean end: the usage chunk (if asked for) and `[DONE]`, when the
    /// answer finished; nothing otherwise (the engine then reports the stream as cut).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if !self.finished || !self.buf.is_empty() {
            return None;
        }
        let mut out = String::new();
        push_stream_end(
            &mut out,
            self.opts.include_usage,
            ("chatcmpl-bedrock", self.created, &self.model),
            self.usage,
        );
        Some(out.into_bytes())
    }
}

/// One event-stream frame as Bedrock sends it (for the mock and tests).
pub fn frame(event_type: &str, payload: &Value) -> Vec<u8> {
    frame_with(":event-type", event_type, "event", payload)
}

/// An exception frame (`:message-type: exception`).
pub fn exception_frame(exception_type: &str, message: &str) -> Vec<u8> {
    frame_with(
        ":exception-type",
        exception_type,
        "exception",
        &json!({"message": message}),
    )
}

fn frame_with(type_header: &str, type_name: &str, message_type: &str, payload: &Value) -> Vec<u8> {
    use aws_smithy_types::event_stream::Header;
    let s = |v: &str| HeaderValue::String(v.to_string().into());
    let msg = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(type_header.to_string(), s(type_name)))
        .add_header(Header::new(":content-type", s("application/json")))
        .add_header(Header::new(":message-type", s(message_type)));
    let mut out = Vec::new();
    // Writing to a Vec fails only for headers or payloads over the format's limits.
    let _ = aws_smithy_eventstream::frame::write_message_to(&msg, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("test request is JSON")
    }

    #[test]
    fn path_encodes_the_model_id_as_one_label() {
        assert_eq!(
            path("", "us.anthropic.claude-3-7-sonnet-20250219-v1:0", true),
            "/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream"
        );
        assert_eq!(
            path(
                "/x",
                "arn:aws:bedrock:us-east-1:1:inference-profile/p",
                false
            ),
            "/x/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fp/converse"
        );
    }

    #[test]
    fn request_maps_messages_tools_and_config() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,AAAA"}}]},
            {"role":"assistant","content":"","tool_calls":[{"id":"t1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"t1","content":"{\"temp\":18}"},
            {"role":"tool","tool_call_id":"t2","content":"sunny"},
            {"role":"user","content":"ok"}],
          "tools":[{"type":"function","function":{"name":"get_weather","description":"W","parameters":{"type":"object"}}}],
          "tool_choice":"required","max_tokens":100,"temperature":0.1,"top_p":0.5,"stop":"END",
          "seed":1,"user":"u","stream":true,"stream_options":{"include_usage":true}}"#;
        let (out, opts) = request(&tree(body), Some(4096)).expect("maps");
        assert!(opts.include_usage);
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            json!({
                "messages":[
                    {"role":"user","content":[{"text":"Look"},{"image":{"format":"jpeg","source":{"bytes":"AAAA"}}}]},
                    {"role":"assistant","content":[{"toolUse":{"toolUseId":"t1","name":"get_weather","input":{"city":"Paris"}}}]},
                    {"role":"user","content":[
                        {"toolResult":{"toolUseId":"t1","content":[{"json":{"temp":18}}]}},
                        {"toolResult":{"toolUseId":"t2","content":[{"text":"sunny"}]}},
                        {"text":"ok"}]}],
                "system":[{"text":"Be brief."}],
                "inferenceConfig":{"maxTokens":100,"temperature":0.1,"topP":0.5,"stopSequences":["END"]},
                "toolConfig":{"tools":[{"toolSpec":{"name":"get_weather","description":"W","inputSchema":{"json":{"type":"object"}}}}],
                              "toolChoice":{"any":{}}}
            })
        );
        // No max_tokens from the client: the catalog's; tool_choice none without tool history
        // leaves the tools out.
        let (out, _) = request(
            &tree(br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"}"#),
            Some(8192),
        )
        .expect("maps");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["inferenceConfig"], json!({"maxTokens": 8192}));
        assert!(v.get("toolConfig").is_none());
        for (b, needle) in [
            (r#"{"messages":[],"n":2}"#, "n > 1"),
            (
                r#"{"messages":[],"response_format":{"type":"json_object"}}"#,
                "JSON mode",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}"#,
                "data URLs",
            ),
            (
                r#"{"messages":[{"role":"tool","tool_call_id":"a","content":"x"}],"tool_choice":"none"}"#,
                "tool_choice none",
            ),
            (
                r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
                "unknown role",
            ),
        ] {
            let e = request(&tree(b.as_bytes()), None).expect_err(b);
            assert!(e.contains(needle), "{b}: {e}");
        }
    }

    #[test]
    fn response_maps_text_tool_use_and_usage() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Sure."},{"toolUse":{"toolUseId":"tooluse_1","name":"f","input":{"a":1}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":10,"outputTokens":4,"totalTokens":14,"cacheReadInputTokens":2},"metrics":{"latencyMs":5}}"#;
        let v: Value =
            serde_json::from_slice(&response(body, "claude", 3).expect("ok")).expect("json");
        assert_eq!(
            v,
            json!({"id":"chatcmpl-bedrock","object":"chat.completion","created":3,"model":"claude",
              "choices":[{"index":0,"message":{"role":"assistant","content":"Sure.",
                "tool_calls":[{"id":"tooluse_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
                "finish_reason":"tool_calls"}],
              "usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}})
        );
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("guardrail_intervened"), "content_filter");
        let e: Value =
            serde_json::from_slice(&error_body(br#"{"message":"Too many tokens"}"#, 400))
                .expect("json");
        assert_eq!(e["error"]["message"], "Too many tokens");
    }

    fn stream_fixture() -> Vec<u8> {
        let mut s = Vec::new();
        for (t, p) in [
            ("messageStart", json!({"role":"assistant","p":"abc"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex":0,"delta":{"text":"Hé"}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex":0,"delta":{"text":"llo"}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex":0})),
            (
                "contentBlockStart",
                json!({"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tu_1","name":"f"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"a\":"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex":1,"delta":{"toolUse":{"input":"1}"}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex":1})),
            ("messageStop", json!({"stopReason":"tool_use"})),
            (
                "metadata",
                json!({"usage":{"inputTokens":5,"outputTokens":3,"totalTokens":8},"metrics":{"latencyMs":9}}),
            ),
        ] {
            s.extend(frame(t, &p));
        }
        s
    }

    fn run(stream: &[u8], split: usize) -> String {
        let mut t = StreamTranslator::new(
            StreamOpts {
                include_usage: true,
            },
            "claude",
            1,
        );
        let mut out = t.push(&stream[..split]).expect("ok");
        out.extend(t.push(&stream[split..]).expect("ok"));
        out.extend(t.finish().expect("finished"));
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn stream_translates_the_same_at_every_split() {
        let stream = stream_fixture();
        let whole = run(&stream, stream.len());
        let data: Vec<&str> = whole
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect();
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Héllo");
        assert_eq!(
            chunks[3]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index":0,"id":"tu_1","type":"function","function":{"name":"f","arguments":""}})
        );
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, "{\"a\":1}");
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            chunks[7]["usage"],
            json!({"prompt_tokens":5,"completion_tokens":3,"total_tokens":8})
        );
        for i in 0..=stream.len() {
            assert_eq!(run(&stream, i), whole, "split at {i}");
        }
    }

    #[test]
    fn exception_frames_and_cut_streams() {
        let mut t = StreamTranslator::new(StreamOpts::default(), "m", 1);
        let e = t
            .push(&exception_frame("throttlingException", "Too many requests"))
            .expect_err("exception");
        assert_eq!(e.kind, "throttlingException");
        assert_eq!(e.message, "Too many requests");
        let mut t = StreamTranslator::new(StreamOpts::default(), "m", 1);
        let first = frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex":0,"delta":{"text":"a"}}),
        );
        assert!(!t.push(&first).expect("ok").is_empty());
        assert!(t.finish().is_none(), "no messageStop: the stream is cut");
        let mut t = StreamTranslator::new(StreamOpts::default(), "m", 1);
        let mut bad = first.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff; // CRC mismatch
        assert_eq!(t.push(&bad).expect_err("crc").kind, "invalid_event");
    }

    #[test]
    fn sigv4_matches_botocore_on_fixed_inputs() {
        // Expected value computed by botocore 1.44.5's SigV4Auth for the same inputs
        // (tests/sdk/bedrock_check.py recomputes it on every test run).
        let creds = AwsCredentials::new(
            "AKIDEXAMPLE".into(),
            crate::config::Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            None,
        );
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_763_700_000);
        let h = sign(
            "POST",
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse",
            &[
                ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
                ("content-type", "application/json"),
            ],
            br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
            &creds,
            "us-east-1",
            time,
        )
        .expect("signs");
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        assert_eq!(get("x-amz-date"), "20251121T044000Z");
        assert_eq!(get("authorization"), EXPECTED_AUTHORIZATION);
    }

    const EXPECTED_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251121/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=93932a68109a83cd624072867994cabc5de4d59609f619c519906dc045194238";
}
