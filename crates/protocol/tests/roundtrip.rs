//! Round trips against JSON shaped like the examples in OpenAI's API reference.

use serde_json::{json, Value};
use sluice_protocol::*;

/// Parses `text` as `T`, serializes it back, and checks the JSON values agree.
fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(text: &str) -> T {
    let parsed: T = serde_json::from_str(text).expect("parse");
    // Through text, not `to_value`: an f32 written as text is its shortest decimal (0.9),
    // while `to_value` widens it to f64 (0.8999999761581421).
    let back: Value =
        serde_json::from_str(&serde_json::to_string(&parsed).expect("serialize")).expect("json");
    let orig: Value = serde_json::from_str(text).expect("json");
    assert_eq!(back, orig, "round trip changed the JSON");
    parsed
}

#[test]
fn completion_request_full() {
    let text = r#"{
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Say this is a test",
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 1,
        "stream": true,
        "stream_options": {"include_usage": true},
        "logprobs": 3,
        "echo": true,
        "stop": "\n",
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100.0},
        "seed": 42,
        "user": "user-1234",
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "stop_token_ids": [2, 32000],
        "ignore_eos": true
    }"#;
    let r: CompletionRequest = roundtrip(text);
    assert_eq!(r.prompt, Prompt::Text("Say this is a test".into()));
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!(r.logprobs, Some(3));
    assert!(r.include_usage());
    assert_eq!(r.stop_strings(), vec!["\n".to_string()]);
    assert_eq!(
        r.logit_bias.as_ref().and_then(|b| b.get("50256")),
        Some(&-100.0)
    );
    assert_eq!(r.stop_token_ids, Some(vec![2, 32000]));
    assert_eq!(r.ignore_eos, Some(true));
    assert!(r.extra.is_empty());
    r.check_ranges().expect("valid");
}

#[test]
fn prompt_shapes() {
    let p = |v: Value| serde_json::from_value::<Prompt>(v);
    assert_eq!(p(json!("hi")).unwrap(), Prompt::Text("hi".into()));
    assert_eq!(
        p(json!(["a", "b"])).unwrap(),
        Prompt::TextBatch(vec!["a".into(), "b".into()])
    );
    assert_eq!(p(json!([1, 2, 3])).unwrap(), Prompt::Tokens(vec![1, 2, 3]));
    assert_eq!(
        p(json!([[1, 2], [3]])).unwrap(),
        Prompt::TokenBatch(vec![vec![1, 2], vec![3]])
    );
    assert_eq!(p(json!([[1, 2], [3]])).unwrap().len(), 2);
    // An empty array is an empty batch, which `check_ranges` rejects.
    assert!(p(json!([])).unwrap().is_empty());
    for bad in [
        json!(5),
        json!([-1]),
        json!(["a", 1]),
        json!([[1], "x"]),
        json!([1.5]),
        json!({}),
    ] {
        let e = p(bad.clone()).expect_err("must fail").to_string();
        assert!(e.contains("prompt"), "{bad}: {e}");
    }
    // Out-of-range token ids are named.
    let e = p(json!([1, 4294967296u64])).unwrap_err().to_string();
    assert!(e.contains("4294967296"), "{e}");
}

#[test]
fn unknown_fields_are_kept_not_rejected() {
    let r: CompletionRequest = serde_json::from_value(json!({
        "model": "m", "prompt": [[1, 2]], "max_tokens": 4,
        "some_future_field": {"a": 1}, "guided_json": null
    }))
    .unwrap();
    assert_eq!(r.prompt, Prompt::TokenBatch(vec![vec![1, 2]]));
    assert_eq!(r.extra.get("some_future_field"), Some(&json!({"a": 1})));
    assert!(r.extra.contains_key("guided_json"));

    let c: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "m", "messages": [{"role": "user", "content": "x", "weird": 1}],
        "parallel_tool_calls": false, "store": true
    }))
    .unwrap();
    assert_eq!(c.extra.len(), 2);
}

#[test]
fn chat_request_full() {
    let text = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in"},
                {"type": "text", "text": "this text?"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"}
        ],
        "max_completion_tokens": 100,
        "max_tokens": 5,
        "temperature": 0.0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "stop": ["</s>", "STOP"],
        "logprobs": true,
        "top_logprobs": 2,
        "seed": -3,
        "ignore_eos": false,
        "chat_template_kwargs": {"enable_thinking": false}
    }"#;
    let r: ChatCompletionRequest = roundtrip(text);
    assert_eq!(r.messages.len(), 4);
    assert_eq!(r.messages[0].role.template_name(), "system");
    assert_eq!(r.messages[1].text().unwrap(), "What is in\nthis text?");
    assert_eq!(r.messages[2].text().unwrap(), "");
    assert_eq!(r.effective_max_tokens(), Some(100));
    assert_eq!(r.stop_strings().len(), 2);
    r.check_ranges().expect("valid");
}

#[test]
fn chat_rejects_images_and_bad_roles() {
    let r: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
        ]}]
    }))
    .unwrap();
    let e = r.check_ranges().unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message().contains("image_url"), "{}", e.message());

    let bad = serde_json::from_value::<ChatCompletionRequest>(json!({
        "messages": [{"role": "wizard", "content": "x"}]
    }));
    assert!(bad.unwrap_err().to_string().contains("wizard"));
}

#[test]
fn range_checks() {
    let base = || CompletionRequest::new("m", "hi");
    type Mutation = Box<dyn Fn(&mut CompletionRequest)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|r| r.temperature = Some(-0.1)), "temperature"),
        (Box::new(|r| r.temperature = Some(f32::NAN)), "temperature"),
        (Box::new(|r| r.top_p = Some(0.0)), "top_p"),
        (Box::new(|r| r.top_p = Some(1.5)), "top_p"),
        (Box::new(|r| r.top_k = Some(-2)), "top_k"),
        (Box::new(|r| r.min_p = Some(1.5)), "min_p"),
        (
            Box::new(|r| r.presence_penalty = Some(2.5)),
            "presence_penalty",
        ),
        (
            Box::new(|r| r.frequency_penalty = Some(-3.0)),
            "frequency_penalty",
        ),
        (
            Box::new(|r| r.repetition_penalty = Some(0.0)),
            "repetition_penalty",
        ),
        (Box::new(|r| r.n = Some(0)), "n"),
        (Box::new(|r| r.max_tokens = Some(0)), "max_tokens"),
        (Box::new(|r| r.logprobs = Some(21)), "logprobs"),
        (
            Box::new(|r| {
                r.n = Some(3);
                r.best_of = Some(2)
            }),
            "best_of",
        ),
        (
            Box::new(|r| r.logit_bias = Some([("abc".to_string(), 1.0)].into())),
            "logit_bias",
        ),
        (
            Box::new(|r| r.logit_bias = Some([("5".to_string(), 101.0)].into())),
            "logit_bias",
        ),
        (Box::new(|r| r.prompt = Prompt::TextBatch(vec![])), "prompt"),
        (Box::new(|r| r.prompt = Prompt::Tokens(vec![])), "prompt"),
        (
            Box::new(|r| r.prompt = Prompt::TokenBatch(vec![vec![1], vec![]])),
            "prompt",
        ),
    ];
    for (mutate, param) in cases {
        let mut r = base();
        r.check_ranges().expect("base valid");
        mutate(&mut r);
        let e = r.check_ranges().expect_err(param);
        assert_eq!(e.status, 400);
        assert_eq!(e.body.error.param.as_deref(), Some(param), "{e}");
    }
    // Boundaries that are allowed.
    let mut r = base();
    r.top_k = Some(-1);
    r.top_p = Some(1.0);
    r.temperature = Some(0.0);
    r.presence_penalty = Some(-2.0);
    r.min_p = Some(0.0);
    r.check_ranges().expect("boundaries valid");

    let mut c = ChatCompletionRequest::new("m", vec![ChatMessage::new(Role::User, "x")]);
    c.top_logprobs = Some(3);
    assert_eq!(
        c.check_ranges().unwrap_err().body.error.param.as_deref(),
        Some("top_logprobs")
    );
    c.logprobs = Some(true);
    c.check_ranges().unwrap();
    c.max_completion_tokens = Some(0);
    c.max_tokens = Some(5);
    assert!(c.check_ranges().is_err(), "max_completion_tokens wins");
    let empty = ChatCompletionRequest::new("m", vec![]);
    assert_eq!(
        empty
            .check_ranges()
            .unwrap_err()
            .body
            .error
            .param
            .as_deref(),
        Some("messages")
    );
}

#[test]
fn completion_response_with_logprobs() {
    let text = r#"{
        "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
        "object": "text_completion",
        "created": 1589478378,
        "model": "gpt-3.5-turbo-instruct",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{
            "text": "\n\nThis is indeed a test",
            "index": 0,
            "logprobs": {
                "tokens": ["\n", "\n", "This"],
                "token_logprobs": [null, -0.25, -1.5],
                "top_logprobs": [null, {"\n": -0.25, " The": -2.0}, {"This": -1.5, "It": -1.75}],
                "text_offset": [0, 1, 2]
            },
            "finish_reason": "length"
        }],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    }"#;
    let r: CompletionResponse = roundtrip(text);
    let lp = r.choices[0].logprobs.as_ref().unwrap();
    // Rank order of the alternatives survives (" The" after "\n", "It" after "This").
    let second = lp.top_logprobs[1].as_ref().unwrap();
    assert_eq!(second.0[0].0, "\n");
    assert_eq!(second.0[1], (" The".to_string(), -2.0));
    assert_eq!(r.choices[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(r.usage, Some(Usage::new(5, 7)));
}

#[test]
fn chat_response_with_logprobs() {
    let text = r#"{
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1702685778,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there"},
            "logprobs": {"content": [
                {"token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111],
                 "top_logprobs": [{"token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111]},
                                  {"token": "Hi", "logprob": -1.3190403, "bytes": [72, 105]}]}
            ]},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
                  "prompt_tokens_details": {"cached_tokens": 0}}
    }"#;
    let r: ChatCompletionResponse = roundtrip(text);
    let c = &r.choices[0];
    assert_eq!(c.message.content.as_deref(), Some("Hello there"));
    let lp = c.logprobs.as_ref().unwrap().content.as_ref().unwrap();
    assert_eq!(lp[0].top_logprobs[1].token, "Hi");
    assert_eq!(r.usage.as_ref().unwrap().total_tokens, 21);
}

#[test]
fn stream_chunks() {
    let first = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#;
    let c: ChatCompletionChunk = roundtrip(first);
    assert_eq!(c.choices[0].delta.role, Some(Role::Assistant));
    let last = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#;
    let c: ChatCompletionChunk = roundtrip(last);
    assert_eq!(c.choices[0].finish_reason, Some(FinishReason::Stop));
    let usage = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
    let c: ChatCompletionChunk = roundtrip(usage);
    assert!(c.choices.is_empty());

    let t = r#"{"id":"cmpl-7","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" world","logprobs":null,"finish_reason":null}]}"#;
    let c: CompletionChunk = roundtrip(t);
    assert_eq!(c.choices[0].text, " world");

    // Constructors produce the same shape a client parses.
    let built = ChatCompletionChunk::delta(
        "chatcmpl-1",
        1694268190,
        "gpt-4o-mini",
        0,
        ChatDelta {
            role: Some(Role::Assistant),
            content: Some(String::new()),
            ..Default::default()
        },
        None,
    );
    let frame = sse_json(&built).unwrap();
    assert!(frame.starts_with("data: {") && frame.ends_with("}\n\n"));
    let v: Value = serde_json::from_str(frame.trim_start_matches("data: ").trim()).unwrap();
    assert_eq!(v["object"], "chat.completion.chunk");
    assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
    let u = CompletionChunk::usage_only("cmpl-7", 1, "m", Usage::new(3, 4));
    let v = serde_json::to_value(&u).unwrap();
    assert_eq!(v["choices"], json!([]));
    assert_eq!(v["usage"]["total_tokens"], 7);
}

#[test]
fn unknown_finish_reason_and_vllm_error_code() {
    let c: CompletionChunk = serde_json::from_value(json!({
        "id": "x", "choices": [{"index": 0, "text": "", "finish_reason": "eos_token"}]
    }))
    .unwrap();
    assert_eq!(c.choices[0].finish_reason, Some(FinishReason::Other));
    // vLLM's error shape: integer code.
    let e: ErrorResponse = serde_json::from_str(
        r#"{"error": {"message": "bad", "type": "BadRequestError", "param": null, "code": 400}}"#,
    )
    .unwrap();
    assert_eq!(e.error.code, Some(ErrorCode::Int(400)));
}

#[test]
fn models_list() {
    let text = r#"{"object": "list", "data": [
        {"id": "model-id-0", "object": "model", "created": 1686935002, "owned_by": "organization-owner"},
        {"id": "model-id-1", "object": "model", "created": 1686935002, "owned_by": "sluice", "max_model_len": 8192}
    ]}"#;
    let m: ModelList = roundtrip(text);
    assert_eq!(m.data[1].max_model_len, Some(8192));
    let built = ModelList::new(vec![ModelCard::new(
        "model-id-0",
        1686935002,
        "organization-owner",
    )]);
    let v = serde_json::to_value(&built).unwrap();
    assert_eq!(
        v,
        json!({"object": "list", "data": [
        {"id": "model-id-0", "object": "model", "created": 1686935002, "owned_by": "organization-owner"}]})
    );
}

#[test]
fn error_bodies() {
    let cases = [
        (
            ApiError::invalid_request("bad max_tokens", Some("max_tokens")),
            400,
            "invalid_request_error",
        ),
        (
            ApiError::context_length_exceeded("too long", Some("messages")),
            400,
            "invalid_request_error",
        ),
        (
            ApiError::authentication("Incorrect API key provided"),
            401,
            "authentication_error",
        ),
        (ApiError::not_found("no route"), 404, "not_found_error"),
        (ApiError::model_not_found("gpt-9"), 404, "not_found_error"),
        (ApiError::rate_limited("slow down"), 429, "rate_limit_error"),
        (ApiError::overloaded("queue full"), 429, "rate_limit_error"),
        (ApiError::server_error("oops"), 500, "server_error"),
    ];
    for (e, status, kind) in cases {
        assert_eq!(e.status, status);
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        let obj = v["error"].as_object().unwrap();
        // All four keys present, `param`/`code` as null when absent (OpenAI's shape).
        for k in ["message", "type", "param", "code"] {
            assert!(obj.contains_key(k), "{k} missing in {v}");
        }
        assert_eq!(obj["type"], kind);
        let back: ErrorResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, e.body);
    }
    let e = ApiError::model_not_found("gpt-9");
    assert!(e.message().contains("gpt-9"));
    assert_eq!(
        e.body.error.code,
        Some(ErrorCode::Str("model_not_found".into()))
    );
    assert_eq!(
        e.to_string(),
        "404 not_found_error: The model `gpt-9` does not exist."
    );
}
