//! Chat templates rendered like Hugging Face's `apply_chat_template`.
//!
//! Every expected string below was produced by Python's jinja2 with transformers' settings
//! (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
//! its `tojson` = `json.dumps(x, ensure_ascii=False, ...)` and `raise_exception`), on the same
//! templates and messages.

use std::path::PathBuf;

use serde_json::{json, Value};
use sluice_model::chat_template::{ChatMessage, ChatTemplate};
use sluice_model::error::ModelError;
use sluice_model::loader::GgufFile;

/// The README prompt of /work/shared/models/smollm2-135m-instruct-q4_1 (no system turn).
const SMOL_README_PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

const EXPECT_SMOL_USER_AGP: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
const EXPECT_SMOL_USER_NOAGP: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n";
const EXPECT_SMOL_CONV: &str = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi there  <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWie geht's? 日本語 😀<|im_end|>\n<|im_start|>assistant\n";
const EXPECT_LLAMA3_CONV_AGP: &str = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWie geht's? 日本語 😀<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
const EXPECT_LLAMA3_CONV_NOAGP: &str = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWie geht's? 日本語 😀<|eot_id|>";
const EXPECT_GEMMA_AGP: &str = "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nWie geht's?<end_of_turn>\n<start_of_turn>model\n";
const EXPECT_GEMMA_NOAGP: &str = "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nWie geht's?<end_of_turn>\n";
const EXPECT_GEMMA_SYSTEM: &str = "ERROR: System role not supported";
const EXPECT_GEMMA_ALTERNATE: &str =
    "ERROR: Conversation roles must alternate user/assistant/user/assistant/...";
const EXPECT_MULTILINE_AGP: &str =
    "User: Hi there\nAssistant: Hello!\nUser: Wie geht's? 日本語 😀\nAssistant:\n";
const EXPECT_MULTILINE_NOAGP: &str =
    "User: Hi there\nAssistant: Hello!\nUser: Wie geht's? 日本語 😀\n";
const EXPECT_TOOLS: &str = "Tools: [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather \\\"now\\\" in a city\\n\", \"parameters\": {\"type\": \"object\", \"properties\": {\"zeta\": {\"type\": \"string\"}, \"alpha\": {\"type\": \"integer\"}}, \"required\": [\"zeta\"]}}}, {\"b\": 1.5, \"a\": null, \"é\": [true, false, []], \"ctrl\": \"\\t\\u0001\"}]\nPretty: [\n    {\n        \"type\": \"function\",\n        \"function\": {\n            \"name\": \"get_weather\",\n            \"description\": \"Weather \\\"now\\\" in a city\\n\",\n            \"parameters\": {\n                \"type\": \"object\",\n                \"properties\": {\n                    \"zeta\": {\n                        \"type\": \"string\"\n                    },\n                    \"alpha\": {\n                        \"type\": \"integer\"\n                    }\n                },\n                \"required\": [\n                    \"zeta\"\n                ]\n            }\n        }\n    },\n    {\n        \"b\": 1.5,\n        \"a\": null,\n        \"é\": [\n            true,\n            false,\n            []\n        ],\n        \"ctrl\": \"\\t\\u0001\"\n    }\n]\n{\"role\": \"user\", \"content\": \"  Hi there  \"}\n{\"role\": \"assistant\", \"content\": \"Hello!\"}\n";
const EXPECT_TOOLS_NONE: &str = "{\"role\": \"user\", \"content\": \"  Hi there  \"}\n{\"role\": \"assistant\", \"content\": \"Hello!\"}\n";
const EXPECT_PYMETHODS: &str = "  HI THERE  [role=user][content=  Hi there  ]HELLO![role=assistant][content=Hello!]WIE GEHT'S?[role=user][content=Wie geht's?]";
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
const MULTILINE: &str = "{% for message in messages %}\n    {% if message.role == 'user' %}\nUser: {{ message.content.strip() }}\n    {% elif message.role == 'system' %}\n        {% continue %}\n    {% else %}\nAssistant: {{ message['content'] }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nAssistant:\n{% endif %}\n";
const TOOLS: &str = "{% if tools is not none %}\nTools: {{ tools | tojson }}\nPretty: {{ tools | tojson(indent=4) }}\n{% endif %}\n{% for m in messages %}{{ m | tojson }}\n{% endfor %}";
const PYMETHODS: &str = "{% for m in messages %}{% if m.content.startswith('Hi') %}{{ m.content.split(' ') | join('|') }}{% endif %}{{ m.content.upper() }}{% for k, v in m.items() %}[{{ k }}={{ v }}]{% endfor %}\n{% endfor %}";

fn conv() -> Value {
    json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Hi there  "},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Wie geht's? 日本語 😀"}
    ])
}

fn gemma_conv() -> Value {
    json!([
        {"role": "user", "content": "  Hi there  "},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Wie geht's?"}
    ])
}

fn render(t: &ChatTemplate, messages: &Value, agp: bool) -> String {
    match t.render_json(messages, &Value::Null, agp) {
        Ok(s) => s,
        Err(e) => panic!("render failed: {e}"),
    }
}

fn template_error_message(r: Result<String, ModelError>) -> String {
    match r {
        Err(ModelError::Template(msg)) => msg,
        other => panic!("expected a template error, got {other:?}"),
    }
}

fn smollm_gguf() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("note: SLUICE_TEST_MODELS is not set; skipping a real-model test");
        return None;
    };
    let p = PathBuf::from(dir).join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} missing under SLUICE_TEST_MODELS",
        p.display()
    );
    Some(p)
}

#[test]
fn smollm2_embedded_chatml_template() {
    let Some(path) = smollm_gguf() else { return };
    let g = GgufFile::open(&path).expect("open SmolLM2 GGUF");
    let source = g
        .get_str("tokenizer.chat_template")
        .expect("SmolLM2 ships a chat template");
    let t = ChatTemplate::new(source, Some("<|im_start|>"), Some("<|im_end|>")).unwrap();
    let user = [ChatMessage::new("user", "What is the capital of France?")];
    let with = t.render(&user, true).unwrap();
    assert_eq!(with, EXPECT_SMOL_USER_AGP);
    // The template adds SmolLM's default system turn when there is none; what follows it is
    // exactly the README's prompt.
    assert!(with.ends_with(SMOL_README_PROMPT), "{with:?}");
    let system_turn = &with[..with.len() - SMOL_README_PROMPT.len()];
    assert!(
        system_turn.starts_with("<|im_start|>system\n") && system_turn.ends_with("<|im_end|>\n")
    );
    assert_eq!(t.render(&user, false).unwrap(), EXPECT_SMOL_USER_NOAGP);
    assert_eq!(render(&t, &conv(), true), EXPECT_SMOL_CONV);
}

#[test]
fn llama3_style_template() {
    let t = ChatTemplate::new(LLAMA3, Some("<|begin_of_text|>"), Some("<|eot_id|>")).unwrap();
    assert_eq!(render(&t, &conv(), true), EXPECT_LLAMA3_CONV_AGP);
    assert_eq!(render(&t, &conv(), false), EXPECT_LLAMA3_CONV_NOAGP);
    // render() on plain messages is the same as render_json() on the same objects.
    let plain: Vec<ChatMessage> = serde_json::from_value(conv()).unwrap();
    assert_eq!(t.render(&plain, true).unwrap(), EXPECT_LLAMA3_CONV_AGP);
}

#[test]
fn gemma_style_template_and_raise_exception() {
    let t = ChatTemplate::new(GEMMA, Some("<bos>"), Some("<eos>")).unwrap();
    assert_eq!(render(&t, &gemma_conv(), true), EXPECT_GEMMA_AGP);
    assert_eq!(render(&t, &gemma_conv(), false), EXPECT_GEMMA_NOAGP);
    // raise_exception's message comes back verbatim (the reference prints "ERROR: <msg>").
    let msg = template_error_message(t.render_json(&conv(), &Value::Null, true));
    assert_eq!(format!("ERROR: {msg}"), EXPECT_GEMMA_SYSTEM);
    let two_users = json!([gemma_conv()[0], gemma_conv()[0]]);
    let msg = template_error_message(t.render_json(&two_users, &Value::Null, true));
    assert_eq!(format!("ERROR: {msg}"), EXPECT_GEMMA_ALTERNATE);
}

#[test]
fn trim_blocks_lstrip_blocks_and_loop_controls() {
    let t = ChatTemplate::new(MULTILINE, None, None).unwrap();
    assert_eq!(render(&t, &conv(), true), EXPECT_MULTILINE_AGP);
    assert_eq!(render(&t, &conv(), false), EXPECT_MULTILINE_NOAGP);
}

#[test]
fn tojson_keeps_key_order_and_python_formatting() {
    let t = ChatTemplate::new(TOOLS, None, None).unwrap();
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather \"now\" in a city\n",
            "parameters": {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}},
                "required": ["zeta"]}}},
        {"b": 1.5, "a": null, "é": [true, false, []], "ctrl": "\t\u{1}"}
    ]);
    let msgs = json!([gemma_conv()[0], gemma_conv()[1]]);
    let out = t
        .render_json(&msgs, &json!({ "tools": tools }), false)
        .unwrap();
    assert_eq!(out, EXPECT_TOOLS);
    // Without `tools`, the template sees None.
    assert_eq!(
        t.render_json(&msgs, &Value::Null, false).unwrap(),
        EXPECT_TOOLS_NONE
    );
}

#[test]
fn python_methods_via_pycompat() {
    let t = ChatTemplate::new(PYMETHODS, None, None).unwrap();
    assert_eq!(render(&t, &gemma_conv(), false), EXPECT_PYMETHODS);
}

#[test]
fn unknown_method_is_a_clear_error() {
    let t = ChatTemplate::new("{{ messages[0].content.frobnicate() }}", None, None).unwrap();
    let msg = template_error_message(t.render_json(&gemma_conv(), &Value::Null, false));
    assert!(msg.contains("frobnicate"), "{msg}");
    assert!(msg.contains("unknown method"), "{msg}");
}

#[test]
fn syntax_errors_are_reported_at_compile_time() {
    let msg = match ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None) {
        Err(ModelError::Template(msg)) => msg,
        other => panic!("expected a template error, got {other:?}"),
    };
    assert!(msg.contains("syntax error"), "{msg}");
}

#[test]
fn strftime_now_formats_the_current_date() {
    let t = ChatTemplate::new(
        "{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}",
        None,
        None,
    )
    .unwrap();
    let out = render(&t, &json!([]), false);
    let (iso, human) = out.split_once('|').unwrap();
    let parts: Vec<&str> = iso.split('-').collect();
    assert_eq!(parts.len(), 3, "{out}");
    let year: i32 = parts[0].parse().unwrap();
    assert!((2024..2200).contains(&year), "{out}");
    assert!(
        human.ends_with(parts[0]) && human.starts_with(parts[2]),
        "{out}"
    );
    let bad = ChatTemplate::new("{{ strftime_now('%Q') }}", None, None).unwrap();
    assert!(
        template_error_message(bad.render_json(&json!([]), &Value::Null, false)).contains("%Q")
    );
}

#[test]
fn special_tokens_extra_variables_and_python_value_rendering() {
    // Values print as Python's str() does (None, True, ['a', "b'c"], {'k': 'v'}).
    let src = r#"{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ enable_thinking }}|{{ messages | length }}|{{ none }}|{{ [1, none, true, 2.5, "a", "b'c"] }}|{{ {"k": "v"} }}|{{ messages[0] }}"#;
    let t = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
    let out = t.render_json(
        &json!([{"role": "user", "content": "x"}]),
        &json!({"enable_thinking": false}),
        true,
    );
    assert_eq!(
        out.unwrap(),
        r#"<s>|</s>|True|False|1|None|[1, None, True, 2.5, 'a', "b'c"]|{'k': 'v'}|{'role': 'user', 'content': 'x'}"#
    );
    // Missing special tokens render as nothing, like an undefined variable in jinja2.
    let t = ChatTemplate::new(src, None, None).unwrap();
    assert_eq!(
        t.render_json(&json!([]), &Value::Null, true).unwrap(),
        r#"||True||0|None|[1, None, True, 2.5, 'a', "b'c"]|{'k': 'v'}|"#
    );
    // `extra` can't replace the messages.
    let t = ChatTemplate::new("{{ messages | length }}", None, None).unwrap();
    assert_eq!(
        t.render_json(&json!([1, 2]), &json!({"messages": []}), true)
            .unwrap(),
        "2"
    );
    assert!(t.render_json(&json!({}), &Value::Null, true).is_err());
    assert!(t.render_json(&json!([]), &json!([1]), true).is_err());
}
