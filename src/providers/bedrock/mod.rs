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
        token_endpoint: None,
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
        let id = call.route.id;
        if let Some(n) = call
            .req
            .native
            .as_deref()
            .filter(|_| invoke::is_anthropic(id))
        {
            if n.count_tokens {
                return Err("bedrock is not asked to count tokens".into());
            }
            // A Messages client's request, in InvokeModel's envelope; the answer is Anthropic's.
            let mut extra = vec![("anthropic_version", invoke::VERSION.into())];
            if !n.betas.is_empty() {
                // The `anthropic-beta` header's features go in the body, as Bedrock takes them.
                extra.push(("anthropic_beta", n.betas.clone().into()));
            }
            return Ok(super::Prepared {
                path: invoke::path(call.base_path, id, call.stream),
                body: n.enveloped(&["model", "stream"], &extra)?.into(),
                wire: super::Wire::BedrockNative,
            });
        }
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

pub mod invoke;
mod response;
mod sigv4;
pub use response::*;
pub use sigv4::{sign, AwsCredentials};

#[cfg(test)]
mod tests;
